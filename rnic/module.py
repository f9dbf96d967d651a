"""The LightningModule: a codec trained (or finetuned) for rate-distortion."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import lightning as L
import torch
from torch import Tensor, nn

from rnic import rd
from rnic.codec_families import is_variable_rate
from rnic.codecs import ENTROPY_MODELS, check_metric, load_codec_state, rd_lambda
from rnic.coding import coder_on, compress_decompress
from rnic.defenses import defended, retarget
from rnic.methods import Step, TrainingMethod, count_passes, rd_step

# Figures that may have no value in an epoch (MS-SSIM of images below its minimum size, VI of
# unperturbed images): computed at the epoch's end and logged only where they exist.
SPARSE_FIGURES = ("ms_ssim", "vi")
# Splits evaluated beside val at every validation (data.monitor): curves of robust overfitting.
MONITOR_STAGES = ("monitor/train", "monitor/test")


class CodecModule(L.LightningModule):
    """Rate-distortion training of a CompressAI codec with its auxiliary (quantiles) loss.

    Optimisation is manual: the main optimizer (clipped) and the aux optimizer step
    once per batch. With `adversarial` mixing, part of each batch is replaced by adversarial
    examples against the current codec (`method=`, rnic.methods), and validation and test also run
    on attacked images: metrics are logged as `{val,test}/clean/*` and `{val,test}/attacked/*`.
    """

    def __init__(
        self,
        codec: nn.Module,
        metric: str = "mse",
        quality: int | None = None,
        lmbda: float | None = None,
        arch: str | None = None,
        optimizer: Callable = torch.optim.Adam,
        aux_optimizer: Callable = torch.optim.Adam,
        scheduler: Callable | None = None,
        scheduler_interval: str = "validation",
        scheduler_monitor: str = "val/clean/loss",
        clip_max_norm: float | None = 1.0,
        real_coding_images: int | None = None,
        coding_device: str = "cpu",
        adversarial: TrainingMethod | None = None,
        max_passes: float | None = None,
        defense: dict | None = None,
        adaptive: bool = True,
        eot_samples: int = 8,
    ):
        super().__init__()
        self.codec = codec
        self.adversarial = adversarial
        # The method's own frozen modules (the teacher): submodules, so that checkpoints keep them;
        # counted in the passes, ignored by DDP.
        self.frozen = {} if adversarial is None else adversarial.frozen_modules()
        for name, frozen in self.frozen.items():
            self.add_module(name, frozen)
        if max_passes is not None and not float(max_passes) > 0:
            raise ValueError(f"module.max_passes={max_passes} must be > 0 (or null)")
        self.max_passes = None if max_passes is None else float(max_passes)
        # Cost accounting (rnic.methods): codec passes (forward + backward, in training batches) and
        # forwards alone, summed over the run; kept in checkpoints.
        self.passes_total = 0.0
        self.forward_passes_total = 0.0
        self.metric = check_metric(metric)
        self.arch = arch
        if lmbda is not None and is_variable_rate(codec):
            raise ValueError(
                f"model.lmbda={lmbda}: {type(codec).__name__} is variable-rate, each training step draws a "
                "rate and takes its lambda; leave model.lmbda=null (model.rate: the rate it validates at)"
            )
        if lmbda is None:
            if quality is None:
                raise ValueError("model.lmbda is required when model.quality is not set")
            lmbda = rd_lambda(metric, quality, arch)  # the zoo's lambda, or a shipped CPU codec's
        if not (float(lmbda) > 0 and math.isfinite(float(lmbda))):
            raise ValueError(f"model.lmbda={lmbda} must be a positive number")
        if scheduler_interval not in ("step", "validation"):
            raise ValueError(f"module.scheduler_interval={scheduler_interval!r}: use 'step' or 'validation'")
        self.lmbda = float(lmbda)
        self.make_optimizer = optimizer
        self.make_aux_optimizer = aux_optimizer
        self.make_scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.clip_max_norm = clip_max_norm
        self.real_coding_images = real_coding_images
        self.coding_device = torch.device(coding_device)
        self.run_config: dict | None = None  # the run's resolved config, kept in checkpoints
        # Validation behind `defense=` (rnic.defenses): the defended pipeline shares the codec's weights;
        # outside the module's children, so checkpoints and DDP see the codec alone.
        self.__dict__["evaluated"] = defended(codec, defense, eot_samples)
        self.adaptive = bool(adaptive)
        self.automatic_optimization = False
        ignored = ["codec", "optimizer", "aux_optimizer", "scheduler", "adversarial", "max_passes", "defense"]
        self.save_hyperparameters(ignore=ignored)
        self.eval_metrics = nn.ModuleDict(
            {
                f"{stage}_{kind}".replace("/", "_"): rd.eval_metrics()
                for stage in ("val", "test", *MONITOR_STAGES)
                for kind in ("clean", "attacked")
            }
        )
        self._coded_images = 0
        # Under DDP: the quantiles take no gradient from the main loss, and the entropy
        # coder's tables are rebuilt on every rank by `update()`; neither is synced.
        self._ddp_params_and_buffers_to_ignore = [
            f"codec.{name}" for name, _ in self.codec.named_parameters() if name.endswith("quantiles")
        ] + [
            f"codec.{module_name}.{buffer_name}"
            for module_name, module in self.codec.named_modules()
            if isinstance(module, ENTROPY_MODELS)
            for buffer_name, _ in module.named_buffers(recurse=False)
        ]
        for prefix, frozen in self.frozen.items():
            names = [name for name, _ in (*frozen.named_parameters(), *frozen.named_buffers())]
            self._ddp_params_and_buffers_to_ignore += [f"{prefix}.{name}" for name in names]

    # --- optimisation -------------------------------------------------------------------------

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        # The quantiles stay in the aux optimizer when frozen (method.train): its step is then skipped.
        main, aux = [], []
        for name, param in self.codec.named_parameters():
            if name.endswith(".quantiles"):
                aux.append(param)
            elif param.requires_grad:
                main.append(param)
        return main, aux

    def configure_optimizers(self):
        main, aux = self.parameter_groups()
        optimizer = self.make_optimizer(main)
        optimizers = [optimizer, self.make_aux_optimizer(aux)]
        if self.make_scheduler is None:
            return optimizers
        scheduler = self.make_scheduler(optimizer)
        if self.scheduler_interval == "step" and isinstance(
            scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
        ):
            raise ValueError(
                "module.scheduler_interval=step needs a per-step scheduler; ReduceLROnPlateau steps on "
                "module.scheduler_monitor after each validation (scheduler_interval=validation)"
            )
        return optimizers, [scheduler]

    def training_loss(self, batch: Tensor) -> Step:
        """The step's loss: the training method's (`method=`), or plain rate-distortion."""
        if self.adversarial is None:
            return rd_step(self.codec, batch, batch, self.lmbda, self.metric)
        return self.adversarial.training_loss(self, batch)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        optimizer, aux_optimizer = self.optimizers()
        counted = [self.codec, *self.frozen.values()]
        parts = [self.codec.g_a] if isinstance(getattr(self.codec, "g_a", None), nn.Module) else []
        with count_passes(counted, batch.shape[0], parts) as cost, self.training_rate() as rate:
            step = self.training_loss(batch)
            loss = step.loss
            self.check_finite(loss)
            optimizer.zero_grad()
            self.manual_backward(loss)
        if self.adversarial is not None:
            self.adversarial.after_backward()  # free training: the input gradient of this backward
        self.passes_total += cost.passes
        self.forward_passes_total += cost.forwards
        x_hat, targets = step.x_hat, step.targets
        if self.clip_max_norm:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.clip_max_norm, gradient_clip_algorithm="norm"
            )
        optimizer.step()

        aux_loss = self.codec.aux_loss()
        self.check_finite(aux_loss, "train/aux_loss")
        if aux_loss.requires_grad:  # frozen entropy models (method.train) take no aux step
            aux_optimizer.zero_grad()
            self.manual_backward(aux_loss)
            # The raw optimizer: stepping the LightningOptimizer would count a second global step.
            aux_optimizer.optimizer.step()

        if self.make_scheduler is not None and self.scheduler_interval == "step":
            self.lr_schedulers().step()

        size = batch.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/aux_loss", aux_loss, batch_size=size)
        self.log("train/bpp", step.bpp.mean(), prog_bar=True, batch_size=size)
        self.log(
            "train/psnr", rd.psnr(x_hat.detach().clamp(0, 1), targets).mean(), prog_bar=True, batch_size=size
        )
        if rd.has_ms_ssim(targets):
            self.log("train/ms_ssim", rd.ms_ssim(x_hat.detach().clamp(0, 1), targets).mean(), batch_size=size)
        for name, value in step.logs.items():
            self.log(name, value, batch_size=size)
        if rate is not None:
            self.log("train/rate", float(rate), batch_size=size)
        self.log("train/passes", cost.passes, batch_size=size)
        self.log("train/forward_passes", cost.forwards, batch_size=size)
        self.log("train/passes_total", self.passes_total, batch_size=size)
        if self.max_passes is not None and self.passes_total >= self.max_passes - 1e-6:
            self.trainer.should_stop = True  # every rank counts the same passes, so all stop together
        return loss

    @contextmanager
    def training_rate(self):
        """A variable-rate codec learns every rate, as CompressAI's variable-rate training does: each step
        draws one uniformly (reproducibly, from the step) and trains at it, with its lambda; a method's
        variable-rate teacher codes at it too. Yields the rate (None for other codecs)."""
        if not is_variable_rate(self.codec):
            yield None
            return
        rates = self.codec.rates
        generator = torch.Generator().manual_seed(self.global_step)
        rate = rates[int(torch.randint(len(rates), (1,), generator=generator))]
        coders = [self.codec, *(m for m in self.frozen.values() if is_variable_rate(m))]
        saved = [coder.rate for coder in coders], self.lmbda
        for coder in coders:
            coder.rate = rate
        self.lmbda = rd_lambda(self.metric, rate, self.arch)
        try:
            yield rate
        finally:
            for coder, own in zip(coders, saved[0], strict=True):
                coder.rate = own
            self.lmbda = saved[1]

    def check_finite(self, loss: Tensor, name: str = "train/loss") -> None:
        # Every rank decides together, so a NaN on one rank cannot leave the others waiting.
        bad = not bool(torch.isfinite(loss))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise FloatingPointError(
                f"{name} is not finite at step {self.global_step} (rank {self.global_rank}: {loss.item()}): "
                "lower module.optimizer.lr or check the data; no checkpoint was written for this step"
            )

    # --- evaluation ---------------------------------------------------------------------------

    def update_entropy_tables(self) -> None:
        # Weights are identical on every rank, so every rank raises together.
        if not all(torch.isfinite(p).all() for p in self.codec.parameters()):
            raise FloatingPointError(
                f"the codec's weights are not finite at step {self.global_step}: "
                "lower module.optimizer.lr or check the data"
            )
        # Outside inference mode, so the rebuilt buffers stay ordinary tensors that a later
        # load_state_dict can resize.
        with torch.inference_mode(False), torch.no_grad():
            self.codec.update(force=True)
        # Not a submodule: the copy must stay out of checkpoints and DDP.
        self.__dict__["coder"] = coder_on(self.evaluated, self.coding_device)
        self._coded_images = 0

    def validation_stages(self) -> list[str]:
        """The stage of each validation dataloader: val, then the monitored splits."""
        monitor = getattr(getattr(self._trainer, "datamodule", None), "monitor", ())
        return ["val", *(f"monitor/{split}" for split in monitor)]

    def on_validation_epoch_start(self) -> None:
        self.update_entropy_tables()
        for stage in self.validation_stages():
            self.reset_sparse_figures(stage)

    def on_test_epoch_start(self) -> None:
        self.update_entropy_tables()
        self.reset_sparse_figures("test")

    def validation_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return self.evaluate(batch, self.validation_stages()[dataloader_idx])

    def test_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        return self.evaluate(batch, "test")

    def reset_sparse_figures(self, stage: str) -> None:
        for kind in ("clean", "attacked"):
            for name in SPARSE_FIGURES:
                self.eval_metrics[f"{stage}_{kind}".replace("/", "_")][name].reset()

    def log_sparse_figures(self, stage: str) -> None:
        """Log MS-SSIM and VI of the epoch where any rank measured them; never a NaN of no images."""
        for kind in ("clean", "attacked"):
            for name in SPARSE_FIGURES:
                metric = self.eval_metrics[f"{stage}_{kind}".replace("/", "_")][name]
                if name == "vi" and kind == "clean":
                    continue
                # Every rank computes (compute() syncs the sums across ranks) and decides alike.
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message=".*compute.*before.*update", category=UserWarning
                    )
                    value = metric.compute()
                if torch.isfinite(value):
                    self.log(f"{stage}/{kind}/{name}", value, add_dataloader_idx=False)

    def evaluate(self, x: Tensor, stage: str) -> dict[str, Tensor]:
        """Clean metrics, and with an attack, the same on the attacked images plus VI."""
        code = self.real_coding_images is None or self._coded_images < self.real_coding_images
        self._coded_images += x.shape[0]
        x_hat = self.log_figures(x, x, stage, "clean", code)
        outputs = {"x": x, "x_hat": x_hat}
        if self.adversarial is None or not self.adversarial.validate:
            return outputs
        # Evaluation runs under inference mode; the attack needs gradients.
        with torch.inference_mode(False), torch.enable_grad():
            attack = self.adversarial.attack
            if self.adaptive and self.evaluated is not self.codec:  # through the defence (BPDA, EOT)
                attack = retarget(attack, self.evaluated)
            x_adv = attack(x.clone()).detach()
        x_hat_adv = self.log_figures(x_adv, x, stage, "attacked", code)
        self.eval_metrics[f"{stage}_attacked".replace("/", "_")]["vi"].update(
            rd.vulnerability_index(x_hat_adv, x_hat, x_adv, x)
        )
        self.log(
            f"{stage}/attacked/psnr_in",
            rd.psnr(x_adv, x).mean(),
            on_epoch=True,
            batch_size=x.shape[0],
            sync_dist=True,
            add_dataloader_idx=False,
        )
        return {**outputs, "x_adv": x_adv, "x_hat_adv": x_hat_adv}

    def log_figures(self, inputs: Tensor, source: Tensor, stage: str, kind: str, code: bool) -> Tensor:
        """Log the codec's figures on `inputs` against `source`; returns the reconstruction."""
        prefix = f"{stage}/{kind}"
        metrics = self.eval_metrics[f"{stage}_{kind}".replace("/", "_")]
        x_hat, likelihoods, num_pixels = rd.forward_padded(self.evaluated, inputs)
        terms = rd.rate_distortion(x_hat, likelihoods, source, self.lmbda, self.metric, num_pixels)
        x_hat = x_hat.clamp(0, 1)
        size = source.shape[0]
        log = dict(on_epoch=True, batch_size=size, sync_dist=True, add_dataloader_idx=False)
        self.log(f"{prefix}/loss", terms["loss"].mean(), **log)
        self.log(f"{prefix}/bpp", terms["bpp"].mean(), **log)
        metrics["psnr"].update(x_hat, source)
        self.log(f"{prefix}/psnr", metrics["psnr"], on_epoch=True, batch_size=size, add_dataloader_idx=False)
        if rd.has_ms_ssim(source):
            metrics["ms_ssim"].update(x_hat, source)
        if code:
            decoded, bpp = compress_decompress(self.coder, inputs)
            self.log(f"{prefix}/bpp_real", bpp.mean().float().to(self.device), **log)
            self.log(f"{prefix}/psnr_real", rd.psnr(decoded, source).mean(), **log)
        return x_hat

    def on_test_epoch_end(self) -> None:
        self.log_sparse_figures("test")

    def on_validation_epoch_end(self) -> None:
        for stage in self.validation_stages():
            self.log_sparse_figures(stage)
        # The x of the PSNR curves (report.py): codec passes spent when these weights were validated.
        self.log("val/passes_total", float(self.passes_total), add_dataloader_idx=False)
        if self.make_scheduler is None or self.scheduler_interval != "validation":
            return
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = self.trainer.callback_metrics.get(self.scheduler_monitor)
            if value is None:
                raise KeyError(f"module.scheduler_monitor={self.scheduler_monitor!r} was not logged")
            scheduler.step(value)
        else:
            scheduler.step()

    # --- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rnic"] = {
            "codec_class": type(self.codec).__name__,
            "config": self.run_config,
            "passes": self.passes_total,
            "forward_passes": self.forward_passes_total,
            "method": None if self.adversarial is None else self.adversarial.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("rnic") or {}
        self.passes_total = float(saved.get("passes") or 0.0)
        self.forward_passes_total = float(saved.get("forward_passes") or 0.0)
        if self.adversarial is not None and saved.get("method"):
            self.adversarial.load_state_dict(saved["method"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # The codec first, resizing the entropy coder's tables, which a load through this
        # parent module would not; then everything, now that the sizes agree.
        for name in ("codec", *self.frozen):
            part = {k[len(name) + 1 :]: v for k, v in state_dict.items() if k.startswith(f"{name}.")}
            load_codec_state(getattr(self, name), part, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
