"""Each ablation (and the paper fidelity) differs from the default config in exactly its own keys."""

import pytest
from omegaconf import OmegaConf

ABLATION_KEYS = {
    "sapg": set(),
    "no_split": {"sapg.num_blocks", "sapg.aggregation"},
    "symmetric": {"sapg.aggregation"},
    "no_off_policy": {"sapg.aggregation"},
    "no_is_correction": {"sapg.importance_correction"},
    "no_entropy": {"sapg.entropy_scale"},
    "disjoint": {"network.disjoint"},
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
    """The study's seven variants are exactly the files of the ablation group."""
    files = {p.stem for p in (repo_root / "recipes" / "config" / "ablation").glob("*.yaml")}
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
    assert cfg["no_entropy"].sapg.entropy_scale == 0
    assert cfg["disjoint"].network.disjoint is True


def test_paper_fidelity_changes_only_its_listed_keys(compose_cfg, repo_root):
    """fidelity=paper differs from fidelity=code exactly in the keys fidelity/paper.yaml lists."""
    listed = set(flatten(OmegaConf.to_container(OmegaConf.load(repo_root / "recipes/config/fidelity/paper.yaml"))))
    assert listed == {
        "sapg.leader", "sapg.clip_mode", "sapg.entropy_schedule", "network.phi_dim", "network.shared_trunk",
        "ppo.critic_target",
    }  # fmt: skip
    code = resolved(compose_cfg("fidelity=code"))
    paper = resolved(compose_cfg("fidelity=paper"))
    assert changed_keys(code, paper) == listed
    assert resolved(compose_cfg()) == code  # code is the default


def test_defaults_match_the_released_code(compose_cfg):
    """Default: code fidelity, last block leads, K = 1, 6 blocks, critic 0.5 * 4, lambda 1."""
    cfg = compose_cfg()
    assert cfg.sapg.leader == "last" and cfg.sapg.clip_mode == "code" and cfg.sapg.off_policy_ratio == 1
    assert cfg.sapg.num_blocks == 6 and cfg.sapg.off_policy_weight == 1.0
    assert cfg.ppo.critic_coeff == 2.0 and cfg.ppo.gamma == 0.99 and cfg.ppo.lmbda == 0.95
    assert cfg.env.num_envs % cfg.sapg.num_blocks == 0
