"""The commands: musegen-train, musegen-generate and musegen-evaluate (the clone's train.py, generate.py
and evaluate.py call the same mains), the Hydra entry points over musegen.apps.

One module per command, so that each imports only its own application (generate must not pay for
Lightning's import) and Hydra names each job after its command (the name a SLURM job or a joblib job
id carries).
"""

#: Where every command finds its configs: the clone's top-level conf/, installed as the package
#: musegen.conf (pyproject.toml), so a command works from any folder, from an editable install or a wheel.
CONFIG_PATH = "pkg://musegen.conf"
