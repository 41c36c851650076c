import os

from hypothesis import HealthCheck, settings

# Kernels compile on first call, so no per-example deadline. CI derandomizes so
# a red run is reproducible; locally examples vary from run to run.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")
