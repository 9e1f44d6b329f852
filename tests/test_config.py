"""Each ablation (and the paper fidelity) differs from the default config in exactly its own keys."""

import pytest
from omegaconf import OmegaConf

ABLATION_KEYS = {
    "sapg": set(),
    "no_split": {"sapg.num_blocks", "sapg.aggregation"},
    "symmetric": {"sapg.aggregation"},
    "no_off_policy": {"sapg.aggregation"},
    "no_is_correction": {"sapg.importance_correction"},
    "no_entropy": {"sapg.entropy_schedule"},
    "disjoint": {"network.disjoint"},
    "no_is_correction_capped": {"sapg.importance_correction", "sapg.max_importance_ratio"},
    **{
        name: {"sapg.num_blocks", "sapg.aggregation", "sapg.entropy_schedule", "sapg.entropy_coefficients"}
        for name in ("ppo_entropy", "ppo_entropy_0.005", "ppo_entropy_0.25")
    },
    "cpo": {"cpo.enabled"},
    "cpo_adr": {"cpo.enabled", "cpo.discriminator_coef"},
}


def flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def resolved(cfg):
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)  # hydra:runtime interpolations only resolve inside a Hydra run
    return flatten(container)


def changed_keys(a, b):
    assert a.keys() == b.keys()
    return {k for k in a if a[k] != b[k]}


def test_every_ablation_has_a_config_file(repo_root):
    """The study's variants and SAPG's successor (``cpo``, ``cpo_adr``) are exactly the files of the ablation group."""
    files = {p.stem for p in (repo_root / "sapg_torchrl" / "configs" / "ablation").glob("*.yaml")}
    assert files == set(ABLATION_KEYS)


@pytest.mark.parametrize("fidelity", ["code", "paper"])
@pytest.mark.parametrize("ablation", sorted(ABLATION_KEYS))
def test_ablation_changes_only_its_own_keys(compose_cfg, ablation, fidelity):
    """ablation=<name> differs from ablation=sapg only (and exactly) in the keys of its own part."""
    base = resolved(compose_cfg("ablation=sapg", f"fidelity={fidelity}"))
    variant = resolved(compose_cfg(f"ablation={ablation}", f"fidelity={fidelity}"))
    assert changed_keys(base, variant) == ABLATION_KEYS[ablation]


def test_ablation_values(compose_cfg):
    """The ablations set what the study says."""
    cfg = {name: compose_cfg(f"ablation={name}") for name in ABLATION_KEYS}
    assert cfg["sapg"].sapg.num_blocks == 6 and cfg["sapg"].sapg.aggregation == "leader_follower"
    assert cfg["no_split"].sapg.num_blocks == 1 and cfg["no_split"].sapg.aggregation == "none"
    assert cfg["symmetric"].sapg.aggregation == "symmetric"
    assert cfg["no_off_policy"].sapg.aggregation == "none"
    assert cfg["no_is_correction"].sapg.importance_correction is False
    assert cfg["no_entropy"].sapg.entropy_schedule == "zero"  # every block 0, whatever the task's entropy scale
    assert cfg["disjoint"].network.disjoint is True
    assert cfg["no_is_correction_capped"].sapg.importance_correction is False
    assert cfg["no_is_correction_capped"].sapg.max_importance_ratio == 3.0
    grid = {name: list(cfg[name].sapg.entropy_coefficients) for name in cfg if name.startswith("ppo_entropy")}
    assert grid == {"ppo_entropy_0.005": [0.005], "ppo_entropy": [0.05], "ppo_entropy_0.25": [0.25]}
    assert all(cfg[name].sapg.num_blocks == 1 for name in grid)
    assert cfg["cpo"].cpo.enabled is True and cfg["cpo"].sapg.aggregation == "leader_follower"


def test_paper_phi_width_per_task(compose_cfg):
    """fidelity=paper: phi 16 on the two hand tasks, 32 on AllegroKuka (and elsewhere); code: 32 everywhere."""
    for env, width in [("isaacgym_shadowhand", 16), ("isaacgym_allegrohand", 16), ("isaacgym_allegrokuka_throw", 32),
                       ("isaacgym_allegrokuka_regrasping", 32), ("isaacgym_allegrokuka_reorientation", 32),
                       ("mountaincar", 32)]:  # fmt: skip
        assert compose_cfg(f"env={env}", "fidelity=paper").network.phi_dim == width, env
        assert compose_cfg(f"env={env}").network.phi_dim == 32, env


def test_allegrokuka_lstm_has_the_published_layer_norm(compose_cfg):
    for task in ("throw", "regrasping", "reorientation"):
        net = compose_cfg(f"env=isaacgym_allegrokuka_{task}").network
        assert net.lstm_size == 768 and net.lstm_layer_norm is True


def test_paper_fidelity_changes_only_its_listed_keys(compose_cfg, repo_root):
    """fidelity=paper differs from fidelity=code exactly in the keys fidelity/paper.yaml lists (it starts from
    fidelity/code.yaml: its defaults list)."""
    paper_yaml = OmegaConf.to_container(OmegaConf.load(repo_root / "sapg_torchrl/configs/fidelity/paper.yaml"))
    assert paper_yaml.pop("defaults") == ["code", "_self_"]
    listed = set(flatten(paper_yaml))
    assert listed == {
        "sapg.leader", "sapg.clip_mode", "sapg.entropy_schedule", "network.phi_dim", "network.shared_trunk",
        "ppo.critic_target",
    }  # fmt: skip
    code = resolved(compose_cfg("fidelity=code", "env=isaacgym_shadowhand"))
    paper = resolved(compose_cfg("fidelity=paper", "env=isaacgym_shadowhand"))
    assert changed_keys(code, paper) == listed  # on a hand task, where the paper's phi is 16
    assert resolved(compose_cfg("env=isaacgym_shadowhand")) == code  # code is the default


def test_defaults_match_the_released_code(compose_cfg):
    """Default: code fidelity, last block leads, K = 1, 6 blocks, critic 0.5 * 4, lambda 1."""
    cfg = compose_cfg()
    assert cfg.sapg.leader == "last" and cfg.sapg.clip_mode == "code" and cfg.sapg.off_policy_ratio == 1
    assert cfg.sapg.num_blocks == 6 and cfg.sapg.off_policy_weight == 1.0
    assert cfg.ppo.critic_coeff == 2.0 and cfg.ppo.gamma == 0.99 and cfg.ppo.lmbda == 0.95
    assert cfg.env.num_envs % cfg.sapg.num_blocks == 0
