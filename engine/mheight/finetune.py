"""mheight-finetune: a sparse top-k MoE whose experts start from pretrained single models.

Each --experts checkpoint (an fc, resnet2d or vit mheight-train run) becomes
one expert; a fresh gate learns to route, then experts and gate train
together (the gate faster: --gate-lr-scale). Inputs are prepared exactly as
the experts saw them (their input scale and canonicalisation).
"""

from __future__ import annotations

import torch

from engine.common.checkpoint import load_checkpoint
from engine.common.seeding import prepare_job
from engine.core.config import JobSpec
from engine.core.errors import JobError
from engine.core.recorder import RunRecorder
from engine.mheight.config import PAD, MHeightFinetuneConfig
from engine.mheight.data import (
    MINOR_FEATURE_VERSION,
    CodeSet,
    check_minor_features,
    check_model_format,
    feature_dim,
)
from engine.mheight.fit import checkpoint_path, fit, load_split
from engine.mheight.models import SparseMoE, build, net_input


def load_experts(paths: list[str], device: torch.device) -> tuple[dict, list[dict], torch.Tensor, float, bool]:
    """The shared expert spec, each expert's weights, the per-group baseline, and the input scale and
    canonicalisation they used."""
    specs, states, bases, scales, canon = [], [], [], set(), set()
    for p in paths:
        path = checkpoint_path(p)
        st = load_checkpoint(path, map_location=device)
        spec = st.get("spec")
        if not spec or spec.get("model") not in ("fc", "resnet2d", "vit"):
            got = spec.get("model") if spec else "not an m-height checkpoint"
            raise JobError(f"{path} is {got!r}; experts must be single fc, resnet2d or vit mheight-train checkpoints")
        check_model_format(st, path)
        check_minor_features(st, path)
        specs.append({**spec["expert"], "arch": spec["model"]})
        states.append({k.removeprefix("net."): v for k, v in st["model"].items() if k.startswith("net.")})
        bases.append(st["model"]["group_base"])
        scales.add(float(st["scale"]))
        canon.add(bool(st["canonicalize"]))
    for s in specs[1:]:
        # name what differs: experts of one --model can differ in --no-norm, --act, --no-p-input or sizes
        differ = [key for key in sorted(set(s) | set(specs[0])) if s.get(key) != specs[0].get(key)]
        if differ:
            what = ", ".join(f"{'architecture' if key == 'arch' else key} ({specs[0].get(key)} vs {s.get(key)})"
                             for key in differ)
            raise JobError(f"the expert checkpoints differ in {what}; train them with the same --model, sizes and options")
    if len(scales) > 1 or len(canon) > 1:
        raise JobError("the expert checkpoints saw differently scaled or canonicalised inputs; train them on the same kind of data")
    # every expert learned its correction on top of its own per-group baseline; the mixture
    # starts from their average (identical when the experts saw the same data)
    return specs[0], states, torch.stack(bases).mean(0), scales.pop(), canon.pop()


def run(spec: JobSpec, rec: RunRecorder) -> None:
    cfg: MHeightFinetuneConfig = spec.config  # type: ignore[assignment]
    device, gen = prepare_job(cfg)
    expert, states, base, scale, canonical = load_experts(cfg.experts, device)
    if canonical != cfg.canonicalize:
        print(f"note: using canonicalize={canonical}, as the experts were trained", flush=True)
    mspec = {"model": "sparse_moe", "expert": expert, "pairs": [], "num_experts": len(states), "top_k": cfg.top_k,
             "gate_hidden": cfg.gate_hidden}
    model = build(mspec).to(device)
    moe: SparseMoE = model.net  # type: ignore[assignment]
    for e, st in enumerate(states):
        moe.experts[e].load_state_dict(st)
    model.group_base.copy_(base)
    print(f"sparse top-{cfg.top_k} MoE of {len(states)} pretrained {expert['arch']} experts", flush=True)

    train_l, val_l = load_split(cfg)
    minors = bool(expert.get("fdim", feature_dim()) > feature_dim())  # the experts' inputs decide
    if minors != cfg.minor_features:
        print(f"note: using minor_features={minors}, as the experts were trained", flush=True)
    p_input = expert["p_input"]
    if p_input != cfg.p_input:
        print(f"note: using p_input={p_input}, as the experts were trained", flush=True)
    train = CodeSet.from_labels(train_l, train_l.finite_groups(), scale, canonical, device, minors, p_input,
                                cfg.cpu_kernels)
    val = CodeSet.from_labels(val_l, val_l.finite_groups(), scale, canonical, device, minors, p_input,
                              cfg.cpu_kernels)
    moe.gate_inputs.set(net_input(train.P, train.feats, p_input))  # the experts keep their own
    gate_params = list(moe.gate.parameters()) + [moe.log_temp]
    opt = torch.optim.AdamW([
        {"params": [p for e in moe.experts for p in e.parameters()], "lr": cfg.lr},
        {"params": gate_params, "lr": cfg.lr * cfg.gate_lr_scale},
    ], weight_decay=cfg.weight_decay)
    meta = {"spec": mspec, "scale": scale, "canonicalize": canonical, "minor_features": minors, "p_input": p_input,
            "minor_feature_version": MINOR_FEATURE_VERSION, "pad": PAD,
            "config": cfg.model_dump(mode="json"), "experts_from": [str(checkpoint_path(p)) for p in cfg.experts]}
    fit(model, meta, train, val, opt, cfg, rec, gen)
