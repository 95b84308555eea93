"""Integrations with engines that run oodguard past one machine (each an optional extra).

:mod:`oodguard.integrations.ray` (extra ``ray``): batch scoring and calibration on Ray Data,
serving on Ray Serve. ``import oodguard`` never imports these modules.
"""
