"""The lakehouse: its Dagster definitions, the Delta layers and the demo source.

Importing it freezes the objects already alive (chiefly Dagster's, as every `dagster` command
imports Dagster first) out of the cyclic garbage collector, which otherwise scans them again in
every full collection while the definitions load, in every process that loads them (every
command and run). Nearly all of them are module-level and live as long as the process
anyway. The freeze is undone at exit, so that the interpreter's last collection still frees
everything (else DuckDB's extension reports leaked objects).
"""

import atexit
import gc

gc.freeze()
atexit.register(gc.unfreeze)
