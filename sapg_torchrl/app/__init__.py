"""The application layer: the recipes' config schema and its validation, the builders from a config to a runner,
a run in its folder (new, resumed, extended), and a trained run evaluated or watched. It uses Hydra's and
OmegaConf's configs; the layers below it do not.

- :mod:`~sapg_torchrl.app.schema`: every key's type, default and accepted values (the structured configs);
- :mod:`~sapg_torchrl.app.build`: the agent and the runner of a config;
- :mod:`~sapg_torchrl.app.run_folder`: what a run folder holds and what running again does with it;
- :mod:`~sapg_torchrl.app.run`: one run in its folder;
- :mod:`~sapg_torchrl.app.trained_run`: a trained run's evaluation and video.
"""
