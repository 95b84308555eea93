def run_demo(*a, **k): raise NotImplementedError
