"""musegen's Hydra configs, installed as the package ``musegen.conf``: the commands find them through
Hydra's ``pkg://musegen.conf`` search path, which only accepts a folder that is a regular package."""
