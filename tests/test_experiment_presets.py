"""The paper presets in configs/experiment/ and how the experiment scripts are found: every preset
composes and validates, each script trains from its preset (the task it uses, the recipe its
override strings used to spell out), the default composition is untouched by the `experiment`
group, and a new script is found without editing a list. Composition only: nothing trains."""
import importlib
import re
import shutil

import pytest
from omegaconf import OmegaConf

from experiments import report
from lab.config.compose import CONFIG_DIR, load_config, register_configs, validate

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# The task each experiment script trains on.
SCRIPT_TASK = {"olsson_layers": "induction", "singh_subcircuits": "singh", "reddy_data": "reddy",
               "bi_induct_copy": "copy", "von_oswald_gd": "regression", "edelman_markov": "markov",
               "hoogland_stages": "regression", "chan_icl_iwl": "chan"}
# The override strings the scripts repeated before the presets existed (their condition overrides
# aside): a preset composes exactly the config they did.
RECIPES = {
    "olsson": ["task=induction", "model=attn_only_2l"],
    "olsson_smeared": ["task=induction", "model=smeared_1l"],
    "singh": ["task=singh", "model=singh", "optim.lr=3e-4", "train.batch_size=32", "train.log_every=10",
              "train.steps=6000", "task.n_exemplars=1", "task.n_heldout_exemplars=4", "clamp=one_l1_head"],
    "reddy": ["task=reddy", "model=reddy", "optim=sgd", "optim.lr=0.01", "optim.momentum=0.9", "train.steps=1000",
              "train.batch_size=128"],
    "bi_induct": ["task=copy", "task.background=markov", "optim.lr=3e-3", "train.steps=1500"],
    "von_oswald": ["task=regression", "model=linear_attn", "model.n_layers=2", "model.attn_mask=context",
                   "model.init_std=0.0095", "optim.lr=1e-3", "optim.b2=0.98", "optim.grad_clip=1e-3",
                   "optim.schedule=warmup_cosine", "optim.warmup_steps=0", "train.batch_size=256", "train.steps=4000"],
    "edelman": ["task=markov", "model=edelman", "optim=adamw", "task.n_states=3", "task.seq_len=101", "optim.lr=5e-4",
                "optim.b2=0.95", "optim.weight_decay=0.1", "optim.schedule=constant", "optim.warmup_steps=0",
                "train.steps=2000"],
    "bietti": ["task=triggers"],
    "chan": ["task=chan", "model=transformer_2l", "train.steps=3000", "train.batch_size=32"],
    "hoogland_lm": ["task=induction", "model=attn_only_2l", "measures.llc.every=75"],
    "hoogland_regression": ["task=regression", "model=transformer_2l", "task.dim=4", "task.n_context=15",
                            "task.seq_len=16", "train.steps=2000", "measures.llc.every=100"],
}


def _yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def test_one_preset_per_paper():
    assert PRESETS == sorted(RECIPES)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_validates(name):
    cfg = load_config([f"experiment={name}"])
    validate(cfg)
    assert "experiment" not in cfg


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_its_papers_recipe(name):
    """The preset's header says what it reproduces; its config is the recipe the script used."""
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and "Deviation" in text
    assert _yaml(load_config([f"experiment={name}"])) == _yaml(load_config(RECIPES[name]))


@pytest.mark.parametrize("script", report.experiment_modules())
def test_script_trains_from_its_preset(script):
    """A new experiment is one script plus one preset: every script names an existing preset (PRESET)
    and an ORDER, and its preset sets the task the script uses."""
    module = importlib.import_module(f"experiments.{script}")
    assert isinstance(getattr(module, "ORDER", None), (int, float)), f"{script} has no ORDER constant"
    preset = getattr(module, "PRESET", None)
    assert preset in PRESETS, f"{script}.PRESET={preset!r} is not a file in configs/experiment/"
    source = (report.HERE / f"{script}.py").read_text()
    assert 'f"experiment={PRESET}"' in source, f"{script} does not compose its runs from its preset"
    assert not re.search(r'"task=\w', source), f"{script} still chooses its task itself; its preset does"
    if script in SCRIPT_TASK:
        assert load_config([f"experiment={preset}"]).task.name == SCRIPT_TASK[script]


def test_script_orders_are_distinct():
    orders = [importlib.import_module(f"experiments.{n}").ORDER for n in report.experiment_modules()]
    assert len(set(orders)) == len(orders)


def test_default_composition_unchanged(tmp_path):
    """Without experiment=, the config is the one composed from config.yaml without the experiment group."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    default = load_config([])
    assert "experiment" not in default
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs, ignore=shutil.ignore_patterns("experiment"))
    main = configs / "config.yaml"
    lines = main.read_text().splitlines(keepends=True)
    without = [ln for ln in lines if ln.strip() != "- experiment: null"]
    assert len(without) == len(lines) - 1, "config.yaml's defaults list has one `- experiment: null` entry"
    main.write_text("".join(without))
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        before = compose("config")
    assert _yaml(default) == _yaml(before)


def test_overrides_win_over_the_preset():
    """Command-line choices and keys override the preset's, whatever their order."""
    assert load_config(["experiment=olsson", "model=attn_only_1l"]).model.n_layers == 1
    assert load_config(["model=attn_only_1l", "experiment=olsson"]).model.n_layers == 1
    assert load_config(["experiment=singh", "optim.lr=1e-3"]).optim.lr == 1e-3
    cfg = load_config(["experiment=reddy", "task.burstiness=0"])
    assert cfg.task.name == "reddy" and cfg.task.burstiness == 0


def test_new_script_is_discovered(tmp_path, monkeypatch):
    """experiment_modules finds scripts by their main(), in ORDER (none: last, by name); helpers and
    the package's own modules are not experiments."""
    main = "def main(argv=None):\n    pass\n"
    (tmp_path / "late.py").write_text(f"ORDER = 2\n{main}")
    (tmp_path / "early.py").write_text(f"ORDER = 1  # first\n{main}")
    (tmp_path / "unordered.py").write_text(main)
    (tmp_path / "helper.py").write_text("ORDER = 0\ndef main_helper():\n    pass\n")
    for name in ("common", "report", "__main__", "__init__"):
        (tmp_path / f"{name}.py").write_text(main)
    monkeypatch.setattr(report, "HERE", tmp_path)
    assert report.experiment_modules() == ["early", "late", "unordered"]


def test_runner_lists_the_discovered_scripts(capsys):
    from experiments.__main__ import main
    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split() == report.experiment_modules()


def test_makefile_lists_no_scripts():
    makefile = (CONFIG_DIR.parent / "Makefile").read_text()
    assert not any(name in makefile for name in report.experiment_modules())
    assert "-m experiments $(ARGS)" in makefile


def test_override_keys_are_checked_against_the_presets_task():
    from lab.config.compose import check_override_keys
    from lab.core import ConfigError
    check_override_keys(["experiment=singh", "task.n_classes=500"])        # a key of Singh's task
    check_override_keys(["experiment=reddy", "task.burstiness=0"])
    with pytest.raises(ConfigError, match="did you mean 'task.n_classes'"):
        check_override_keys(["experiment=singh", "task.n_clases=5"])
    with pytest.raises(ConfigError, match="unknown config key 'task.n_classes'"):
        check_override_keys(["task.n_classes=5"])                           # the default task has none


def test_smoke_runs_leave_the_readme_table(monkeypatch):
    import experiments.__main__ as runner
    calls = []
    monkeypatch.setattr(runner, "experiment_modules", lambda: ["olsson_layers"])
    monkeypatch.setattr(runner.subprocess, "call", lambda cmd, cwd=None: calls.append(cmd[2:]) or 0)
    assert runner.main(["--smoke"]) == 0
    assert calls == [["experiments.olsson_layers", "--smoke"]]          # no experiments.report
    calls.clear()
    assert runner.main([]) == 0
    assert calls == [["experiments.olsson_layers"], ["experiments.report"]]


@pytest.mark.parametrize("clamps", ["singh_A", "singh_match", "singh_copy", "[singh_A,singh_copy]", "perfect_prev_token"])
def test_singh_clamp_presets_compose_with_the_papers_conditions(clamps):
    """Singh et al.'s Fig. 5b conditions add to experiment=singh's one-active-head ablation, never replace it."""
    cfg = load_config(["experiment=singh", f"clamp={clamps}"])
    validate(cfg)
    assert "one_l1_head" in cfg.clamps and len(cfg.clamps) >= 2
