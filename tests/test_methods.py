"""Robust training methods: each method through train(), exact pass counts, free's budget,
the frozen teacher, bad input, fast's collapse guard, the BD-rate wrapper, and the study preset."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate

from rnic import rd
from rnic.attacks import PGD, Objective, Threat, quantization_proxy
from rnic.codecs import build_codec
from rnic.config import build_attacks
from rnic.methods import ConsistencyTraining, FreeTraining, JacobianPenalty, LatentConsistency, TrainingMethod
from rnic.module import CodecModule
from rnic.report.bd import bd_psnr, bd_rate
from rnic.training import build_adversarial, train
from tests.conftest import CONF, ROOT, TINY, compose_config, tiny_widths

# Against the clean reconstruction, whose forward the accounting below counts (train.py's default adversary
# aims at the source, which needs none).
ATTACK = ["attack=linf", "attack.steps=2", "attack.objective.reference=clean"]
# Per step, batch of 2, ratio 0.5 (one adversarial image: half a pass per attack step), 2 PGD steps:
# (passes, forward-only passes). fast's guard runs at steps 0 and 2 (method.guard_every=2): the PGD check
# (1 pass, 0.5 forward for its clean reference) and the two objective values (2 x 1.0 forward).
EXPECTED = {
    "none": [(1.0, 0.0)] * 2,
    "mix": [(2.0, 0.5)] * 2,  # 1 + 2 attack steps x 0.5; the attack's clean reference
    "free": [(1.0, 0.0)] * 2,  # one pass per replay, nothing else
    "fast": [(2.5, 3.0), (1.5, 0.5)],  # 1 + one step x 0.5 (+ the guard at step 0)
    # clean 1 + adversarial 0.5 + attack 2 x 0.5; the attack's clean reference and the term's (real rounding)
    "consistency": [(2.5, 1.0)] * 2,
    "teacher": [(2.5, 1.0)] * 2,  # as consistency, the teacher's forward the term's reference
    "latent": [(2.5, 1.0)] * 2,  # as consistency, its analysis passes counted as whole ones
    "jacobian": [(2.0, 0.0)] * 2,  # clean 1 + its two reconstructions of the first image (2 x 0.5)
}
SHORT = ["trainer.max_steps=2", "trainer.val_check_interval=2", "method.validate=false"]


def logged(folder, *names):
    with open(folder / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(names[0])]
    return [tuple(float(r[n]) for n in names) for r in rows]


@pytest.mark.parametrize("method", list(EXPECTED))
def test_each_method_trains_and_logs_its_exact_passes(tiny_cfg, tmp_path, method):
    guard = ["method.guard_every=2"] if method == "fast" else []
    results = train(tiny_cfg(*ATTACK, *SHORT, f"method={method}", *guard))
    per_step = logged(tmp_path, "train/passes", "train/forward_passes")
    assert per_step == EXPECTED[method]
    saved = json.loads((tmp_path / "final_metrics.json").read_text())
    assert saved["method"] == method and saved["step"] == 2
    assert saved["passes"] == pytest.approx(sum(p for p, _ in per_step))
    assert saved["forward_passes"] == pytest.approx(sum(f for _, f in per_step))
    assert saved["train_seconds"] > 0 and results["passes"] == saved["passes"]


def test_free_replays_each_batch_m_times_one_step_each(tiny_cfg, tmp_path):
    train(
        tiny_cfg(
            *ATTACK,
            "method=free",
            "method.replays=4",
            "method.validate=false",
            "trainer.val_check_interval=4",
        )
    )
    assert logged(tmp_path, "train/passes", "train/replay") == [(1.0, r) for r in (0, 1, 2, 3)]
    assert json.loads((tmp_path / "final_metrics.json").read_text())["passes"] == 4  # 4 passes, one batch


def test_free_perturbation_stays_in_budget_across_batches_and_replays(photos):
    torch.manual_seed(0)
    codec = build_codec("bmshj2018_hyperprior", N=16, M=24)
    module = CodecModule(codec, lmbda=0.01)
    eps = 4 / 255
    free = FreeTraining(PGD(codec, eps=eps), replays=3, ratio=1.0)
    threat, budget = Threat("linf"), torch.full((2, 1, 1, 1), eps)
    batches = [photos, photos.flip(-1).contiguous()]
    moved = []
    for batch in batches:
        for replay in range(3):
            step = free.training_loss(module, batch if replay == 0 else torch.rand_like(batch))
            codec.zero_grad()
            step.loss.backward()  # one backward: the codec's gradient and the input gradient
            assert all(p.grad is not None for p in module.parameter_groups()[0][:3])
            free.after_backward()
            # the held batch is replayed (not the loader's new one), the carried perturbation is admissible
            assert torch.equal(free._held, batch)
            assert bool(threat.contains(batch, batch + free._delta, budget).all())
            assert free._delta.abs().max() <= eps + 1e-6
            moved.append(free._delta.clone())
    assert moved[0].abs().max() > 0.5 * eps  # it does move, by a budget-sized step
    assert not torch.equal(moved[2], moved[3])  # and carries on into the next batch


def test_the_teacher_never_changes(tiny_cfg, tmp_path):
    torch.manual_seed(1)
    start = build_codec("bmshj2018_hyperprior", N=16, M=24)
    weights = tmp_path / "start.pt"
    torch.save(start.state_dict(), weights)
    train(tiny_cfg(*ATTACK, *SHORT, "method=teacher", f"model.weights={weights}"))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    reference = start.state_dict()
    params = [name for name, _ in start.named_parameters()]
    assert all(torch.equal(state[f"teacher.{k}"], reference[k]) for k in params)
    assert any(not torch.equal(state[f"codec.{k}"], reference[k]) for k in params)  # the student learned


def test_a_single_step_adversary_costs_one_step(tiny_cfg, tmp_path):
    # clean 1 + one step on half the batch 0.5 + the adversarial branch 0.5; the two clean references
    train(tiny_cfg(*ATTACK, *SHORT, "method=consistency", "method.adversary=single_step"))
    assert logged(tmp_path, "train/passes", "train/forward_passes") == [(2.0, 1.0)] * 2


@pytest.mark.parametrize(("part", "learns"), [("encoder", ("g_a", "h_a")), ("decoder", ("g_s",))])
def test_adv_train_learns_only_its_part(tiny_cfg, tmp_path, part, learns):
    torch.manual_seed(1)
    start = build_codec("bmshj2018_hyperprior", N=16, M=24)
    weights = tmp_path / "start.pt"
    torch.save(start.state_dict(), weights)
    method = ["method=consistency", f"method.train={part}"]
    train(tiny_cfg(*ATTACK, *SHORT, *method, f"model.weights={weights}"))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for top in ("g_a", "h_a", "g_s", "h_s", "entropy_bottleneck"):
        names = [name for name, _ in start.named_parameters() if name.split(".")[0] == top]
        changed = any(not torch.equal(state[f"codec.{name}"], start.state_dict()[name]) for name in names)
        assert changed == (top in learns), top


def test_the_consistency_term_compares_with_a_fixed_real_rounding_reference(photos):
    codec = build_codec("bmshj2018_hyperprior_cpu", quality=1, pretrained=True)
    module = CodecModule(codec, lmbda=0.01)
    method = ConsistencyTraining(PGD(codec, eps=8 / 255, steps=1), ratio=1.0)
    codec.train()  # as in training: the entropy models add noise unless the proxy replaces it
    source = photos[:1]
    with quantization_proxy(codec, "ste"):
        reference = method.reference(module, source, None)
    assert not reference.requires_grad  # detached: no gradient pulls the clean reconstruction
    with torch.no_grad():
        real = rd.forward_padded(codec.eval(), source)[0]
    assert torch.allclose(reference, real, atol=1e-5)  # the rounding the attacker faces, not noise
    codec.train()
    torch.manual_seed(0)
    noise = (8 / 255) * torch.sign(torch.randn_like(source))
    adversarial = (source + noise).clamp(0, 1).requires_grad_(True)
    term = method.term(module, source, adversarial, None)
    (grad,) = torch.autograd.grad(term.sum(), adversarial)
    assert float(term.detach()) > 0 and grad.abs().sum() > 0  # straight-through: the term reaches the input


def test_the_latent_term_needs_no_decoder(photos):
    torch.manual_seed(0)
    codec = build_codec("bmshj2018_hyperprior", N=16, M=24)
    module = CodecModule(codec, lmbda=0.01)
    method = LatentConsistency(PGD(codec, eps=4 / 255, steps=1), ratio=1.0)
    decoded = []
    handle = codec.g_s.register_forward_hook(lambda *args: decoded.append(1))
    source = photos[:1]
    term = method.term(module, source, (source + 2 / 255).clamp(0, 1), None)
    handle.remove()
    assert not decoded and float(term) > 0
    assert float(method.term(module, source, source, None)) == 0


def test_the_jacobian_term_is_the_squared_jacobian_vector_product(trained_codec, photos):
    """jacobian's finite difference at a small step is lmbda 255^2 h^2 ||J v||^2 / pixels, J v the
    reconstruction's Jacobian-vector product (autograd, quantisation skipped) along the same signs v."""
    from types import SimpleNamespace

    h, lmbda = 1e-3, 0.0067
    method = JacobianPenalty(PGD(trained_codec, eps=4 / 255, steps=1), jacobian_step=h)
    x = photos[:, :, :64, :64].clamp(0.01, 0.99)  # away from the clamp to [0, 1]
    torch.manual_seed(0)
    term = method.term(SimpleNamespace(codec=trained_codec, lmbda=lmbda), x)
    torch.manual_seed(0)
    signs = torch.randint(0, 2, x.shape, dtype=x.dtype) * 2 - 1
    with quantization_proxy(trained_codec, "skip"):
        _, jv = torch.autograd.functional.jvp(lambda z: rd.forward_padded(trained_codec, z)[0], x, signs)
    expected = lmbda * 255**2 * h**2 * jv.pow(2).flatten(1).mean(1)
    assert float(jv.pow(2).mean()) > 1e-3  # the trained codec passes the perturbation on
    assert torch.allclose(term.detach(), expected, rtol=0.02)


def test_every_method_yaml_builds_the_method_of_its_name(tmp_path):
    """method=NAME composes rnic/conf/method/NAME.yaml, whose instantiation is the method recorded under
    NAME; an unknown method, or a key the chosen method does not take, is refused naming it."""
    names = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    assert len(names) >= 8 and set(EXPECTED) <= set(names)
    attack = PGD(build_codec("bmshj2018_factorized", N=16, M=24), eps=4 / 255, steps=1)
    for name in names:
        method = instantiate(compose_config(tmp_path, f"method={name}").method, attack=attack)
        assert isinstance(method, TrainingMethod) and method.name == name == type(method).name
    with pytest.raises(Exception, match="Could not find 'method/pgd'"):
        compose_config(tmp_path, "method=pgd")
    with pytest.raises(Exception, match=r"Could not override 'method\.replays'"):
        compose_config(tmp_path, "method=mix", "method.replays=2")  # free's key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=consistency", "method.train=prior"], "method.train='prior' is unknown"),
        (["method=consistency", "method.term_proxy=round"], "method.term_proxy='round' is unknown"),
        (["method=latent", "method.adversary=fgsm"], "method.adversary='fgsm' is unknown"),
        (["method=free", "method.replays=0"], "method.replays=0"),
        (["method=consistency", "method.beta=-1"], "method.beta=-1"),
        (["method=jacobian", "method.jacobian_step=0"], "method.jacobian_step=0 must be in (0, 1]"),
        (["attack=none", "method=free"], "method=free needs an attack"),
        (["module.max_passes=0"], "module.max_passes=0"),
    ],
)
def test_bad_settings_are_named_before_training(tiny_cfg, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        train(tiny_cfg(*([] if "attack=none" in overrides else ATTACK), *overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_a_teacher_of_another_architecture_is_refused(tiny_cfg, tmp_path):
    other = tmp_path / "factorized.pt"
    torch.save(build_codec("bmshj2018_factorized", N=16, M=24).state_dict(), other)
    cfg = tiny_cfg(*ATTACK, "method=teacher", f"method.teacher={other}")
    with pytest.raises(ValueError, match=r"method\.teacher=.*not the student's architecture"):
        build_adversarial(cfg, build_codec("bmshj2018_hyperprior", N=16, M=24))


def test_a_fast_collapse_is_logged_and_reported(tiny_cfg, tmp_path, capsys, caplog):
    # A guard ratio far below 1 makes the guard fire at its first check (step 0).
    train(tiny_cfg(*ATTACK, *SHORT, "method=fast", "method.guard_every=2", "method.guard_ratio=1e-6"))
    assert json.loads((tmp_path / "final_metrics.json").read_text())["fast_collapse_step"] == 0
    assert "fast: COLLAPSED (catastrophic overfitting) at step 0" in capsys.readouterr().out
    assert "catastrophic overfitting at step 0" in caplog.text
    # From then on it trains on the configured attack (2 PGD steps on half the batch).
    assert logged(tmp_path, "train/passes", "train/fast_collapsed")[1] == (2.0, 1.0)


def test_bd_rate_wrapper():
    rate, psnr = [0.2, 0.4, 0.8], [28.0, 31.0, 34.0]
    assert bd_rate(rate, psnr, rate, psnr) == pytest.approx(0, abs=1e-9)
    assert bd_psnr(rate, psnr, rate, psnr) == pytest.approx(0, abs=1e-9)
    assert bd_rate(rate, psnr, [r * 1.1 for r in rate], psnr) == pytest.approx(10.0)  # 10% more bits
    assert bd_psnr(rate, psnr, rate, [p + 0.5 for p in psnr]) == pytest.approx(0.5)
    assert bd_rate(rate[::-1], psnr[::-1], rate, psnr) == pytest.approx(0, abs=1e-9)  # order-free
    with pytest.raises(ValueError, match="not monotone"):
        bd_rate(rate, [28.0, 31.0, 30.0], rate, psnr)
    with pytest.raises(ValueError, match="method='spline'"):
        bd_rate(rate, psnr, rate, psnr, method="spline")


def test_the_study_preset_composes(tmp_path):
    cfg = compose_config(tmp_path, "experiment=robust_methods", "model.weights=w.pt", keep_hydra=True)
    assert set(cfg.hydra.sweeper.params["method"].split(",")) == {
        "none", "mix", "free", "fast", "consistency", "teacher", "latent", "jacobian"
    }  # fmt: skip
    assert cfg.hydra.sweeper.params["model.quality"].split(",") == ["1", "2", "3"] and cfg.model.pretrained
    attacks = cfg.robust_eval.attacks
    assert {a._target_ for a in attacks.values()} == {"rnic.attacks.AutoAttack"}
    assert attacks.linf.threat == "linf" and attacks.linf.eps == cfg.attack.eps
    assert attacks.mse.threat == "mse" and attacks.mse.eps == 1e-4


@pytest.mark.parametrize("experiment", ["robust_methods", "cpu_tour"])
def test_the_studies_train_against_the_objective_their_methods_minimise(tmp_path, experiment):
    # mix with target=source minimises the distortion against the source; an adversary of the distortion
    # against the clean reconstruction, or a codec taught to code the attacked input itself, bought less
    # attacked quality (docs/studies.md).
    cfg = compose_config(tmp_path, f"experiment={experiment}")
    assert cfg.method._target_ == "rnic.methods.MixTraining" and cfg.method.target == "source"
    assert cfg.attack.objective.reference == "source"
    codec = build_codec("bmshj2018_hyperprior", N=16, M=24).eval()
    (attack,) = build_attacks(cfg.attack, codec)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x_adv = (x + 0.03).clamp(0, 1)
    ctx = attack.objective.context(codec, x, None, None)
    with torch.no_grad():
        x_hat = rd.forward_padded(codec, x_adv)[0]
        assert attack.value(x_adv, ctx).item() == pytest.approx(rd.mse(x_hat.clamp(0, 1), x).item(), rel=1e-4)


@pytest.mark.slow
def test_a_two_method_miniature_study_runs_through_a_multirun_and_the_report(tmp_path):
    base = tmp_path / "base.pt"
    torch.manual_seed(0)
    torch.save(build_codec("bmshj2018_hyperprior", N=16, M=24).state_dict(), base)
    sweep = tmp_path / "sweep"
    skip = ("trainer.max_steps", "trainer.val_check", "callbacks.last", "attack=", "robust_eval")
    tiny = [o for o in TINY if not o.startswith(skip)]
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=robust_methods", *tiny, *tiny_widths([]),
         f"model.weights={base}", "method=none,free", "model.quality=3", "method.validate=false",
         "module.max_passes=2",
         "attack.steps=1", "trainer.val_check_interval=2", "callbacks.last_checkpoint.every_n_train_steps=2",
         "robust_eval.max_images=1", "robust_eval.attacks.linf.steps=1", "robust_eval.attacks.linf.queries=2",
         "robust_eval.attacks.mse.steps=1", "robust_eval.attacks.mse.queries=2", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.rglob("final_metrics.json"))
    assert len(jobs) == 2  # 2 methods; the command line's one quality replaces the preset's three
    for job in jobs:
        final = json.loads((job / "final_metrics.json").read_text())
        assert final["passes"] == 2 and set(final["robust_eval"]) == {"linf", "mse"}
        assert (job / "robust_eval" / "mse" / "results.json").is_file()

    report = tmp_path / "report"
    run = subprocess.run([sys.executable, "report.py", str(sweep), "--out", str(report)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    with open(report / "robust_methods.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"none", "free"}
    assert float(rows["none"]["passes"]) == 2 and float(rows["free"]["passes"]) == 2
    assert float(rows["none"]["psnr_adv_linf_gain"]) == 0  # the control against itself
    assert (report / "robust_gain_vs_compute.png").is_file()
    assert "Robust training methods" in (report / "report.md").read_text()


@pytest.mark.parametrize("method", ["consistency", "latent"])
def test_an_ensemble_adversary_attacks_with_the_method_objective(method):
    """consistency and latent set the adversary's objective (against the clean reconstruction, the term's
    metric); with attack=auto every member must get it, not only the ensemble's shallow copy."""
    from rnic.attacks import AutoAttack

    codec = build_codec("bmshj2018_hyperprior", N=16, M=24)
    auto = AutoAttack(
        codec, threat="mse", eps=1e-4, steps=1, objective=Objective(kind="distortion", reference="source")
    )
    built = {"consistency": ConsistencyTraining, "latent": LatentConsistency}[method](auto, metric="mse")
    members = built.attack.members.values()
    assert {(m.objective.kind, m.objective.reference, m.objective.metric) for m in members} == {
        ("distortion", "clean", "mse")
    }
    assert {m.objective.reference for m in auto.members.values()} == {"clean", "source"}  # untouched


@pytest.mark.parametrize(
    "overrides", [["method=fast"], ["method=consistency", "method.adversary=single_step"]]
)
def test_a_single_step_from_attack_auto_trains(tiny_cfg, tmp_path, overrides):
    """fast and single_step take auto's threat and budget and a gradient member's proxy; fast's guard
    compares auto's examples with the single step's."""
    auto = ["attack=auto", "attack.threat=linf", "attack.steps=1", "attack.queries=2"]
    guard = ["method.guard_every=1"] if "method=fast" in overrides else []  # the guard: auto
    train(tiny_cfg(*auto, *SHORT, *overrides, "trainer.max_steps=1", *guard))
    saved = json.loads((tmp_path / "final_metrics.json").read_text())
    assert saved["step"] == 1
