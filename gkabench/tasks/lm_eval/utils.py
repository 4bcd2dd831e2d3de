"""lm-eval glue for gkabench's long-context tasks (the YAML files beside this one); the code lives in
gkabench.tasks.longctx."""

from gkabench.tasks.longctx import lm_eval_aggregate as aggregate  # noqa: F401
from gkabench.tasks.longctx import lm_eval_dataset as dataset  # noqa: F401
from gkabench.tasks.longctx import lm_eval_process_results as process_results  # noqa: F401
