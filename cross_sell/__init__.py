"""cross_sell: product affinity and cross-sell opportunity scores as a Dagster data product."""

import os as _os

__version__ = "0.1.0"

# scikit-learn's OpenMP runtime reads its wait policy once, when it loads, so this must be set
# before anything imports scikit-learn. By default its threads spin for a while at every barrier
# before they sleep. The boosted trees run thousands of short parallel regions; on a machine that
# is shared with DuckDB, the Dagster daemon or another run, the spinning threads steal the core
# from the thread they wait for, and a fit took from 2 s up to 17 s. Sleeping threads cost the
# same on an idle machine. A policy set in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
