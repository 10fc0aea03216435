"""cross_sell: product affinity and cross-sell opportunity scores as a Dagster data product."""

import os as _os

__version__ = "0.1.0"

# scikit-learn's OpenMP runtime reads its wait policy once, when it loads, so this must be set
# before anything imports scikit-learn. By default its threads spin for a while at every barrier
# before they sleep. The boosted trees run thousands of short parallel regions; on a machine that
# is shared with another process (a second run, a test worker, a busy webserver), the spinning
# threads steal the core from the thread they wait for: one fit took 2.0 s to 17.6 s, against 2.1 s
# to 6.9 s with sleeping threads. On an idle machine sleeping costs a little (2.0 s to 2.35 s).
# A policy set in the environment wins (OMP_WAIT_POLICY=ACTIVE on a machine of its own).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
