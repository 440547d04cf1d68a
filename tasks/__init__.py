"""Prefect tasks over the camtrap library: they take and return URIs, paths and config models.

The library modules that load torch, torchvision and matplotlib (camtrap.stages, .models,
.predict) are imported inside the tasks that run them, not at the top of a module: `prefect
deploy`, a flow run that stops at a refused argument and a run served from the caches then
import a flow in about 3 CPU-seconds instead of 10 (tests/test_house_rules.py)."""
