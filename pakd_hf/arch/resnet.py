"""ResNet family: ``ResNetForImageClassification`` and ``ResNetModel`` (transformers' ResNet).

What transformers 5.24's modeling code builds from a ``ResNetConfig``
(``models/resnet/modeling_resnet.py``):

- stem ``embedder.embedder``: conv ``num_channels -> embedding_size`` (7x7, stride 2), BatchNorm,
  ReLU, then a max-pool.
- ``encoder.stages[s]`` (one per ``hidden_sizes`` entry), ``depths[s]`` blocks in ``layers`` (an
  ``nn.Sequential``). A stage reads ``embedding_size`` (s = 0) or ``hidden_sizes[s - 1]`` channels and
  writes ``hidden_sizes[s]``; its first block has stride 2 (stage 0: only with
  ``downsample_in_first_stage``), the others stride 1.
- A block computes ``act(layer(x) + shortcut(x))``; ``shortcut`` is a 1x1 conv + BatchNorm when
  ``in != out or stride != 1``, else ``nn.Identity``. ``basic``: ``layer`` = conv3x3 ``in -> out``,
  conv3x3 ``out -> out``. ``bottleneck``: conv1x1 ``in -> out // 4``, conv3x3 ``out // 4 -> out // 4``,
  conv1x1 ``out // 4 -> out``: the inner width is ``out // reduction`` with ``reduction=4`` a
  constructor default that ``ResNetStage`` never passes, so a stock config cannot set it.
- ``pooler`` (global average) and ``classifier = Sequential(Flatten, Linear(hidden_sizes[-1],
  num_labels))`` (``Identity`` when ``num_labels == 0``).

How the structure kinds map (only shapes a stock ``ResNetConfig`` describes are exported):

- ``hidden``: channels of the residual STREAMS. A stream is every channel axis tied by residual
  adds: a stage's output (its blocks' last conv + BN, its first block's shortcut conv + BN) together
  with everything reading it (the next blocks' first convs, the next stage's first conv and shortcut
  conv, the classifier). The stem output is its own stream when stage 0's first block has a conv
  shortcut (``embedding_size != hidden_sizes[0]`` or stride 2), else it is stage 0's stream (an
  identity shortcut adds the stem output to stage 0's first block). The structure's hidden dims are
  the streams concatenated (stem, stage 0, ...; a tied stem is not repeated); a hidden count is split
  over the streams in proportion to their widths (:meth:`hidden_segments`). The coupled groups are
  read from the known topology (the shortcut modules say which streams are tied) rather than traced
  with torch-pruning's DependencyGraph: the engine needs them as cuts anyway, and the stock-config
  rules (which shapes a config can describe) have to be written by hand either way.
- ``ffn`` (internal): each block's inner channels (basic: conv 1's outputs; bottleneck: conv 1's
  outputs, then conv 2's, concatenated). The stock config derives them from the stage width (basic:
  ``hidden_sizes[s]``, bottleneck: ``hidden_sizes[s] // 4``), so they follow ``hidden``
  (:attr:`ffn_follows_hidden`): each block keeps its most important inner channels, as many as the
  config implies. ``ffn`` is not a recipe kind for this family.
- ``layers``: residual blocks, numbered across stages (stage 0's blocks, then stage 1's, ...). The
  first block of a stage is never removed (it changes width and resolution): :meth:`required_layers`.
  The remaining counts become ``depths``.
- ``heads``: none (``Structure.num_heads == 0``). Budgets and unstructured / N:M masks are refused
  too (:meth:`check_kinds`).

Masking is exact in train and eval mode: a masked channel's conv rows AND its BatchNorm weight and
bias are zero, so it outputs exactly 0 whatever the running statistics (``0 * (x - mean) / std + 0``);
readers' input columns are zero too. Compaction slices convs along both channel axes and BatchNorms
with their ``running_mean`` / ``running_var``. Config fields written: ``embedding_size``,
``hidden_sizes``, ``depths`` (read back from the compacted modules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from . import register
from .base import (
    ArchAdapter,
    AttentionParts,
    Cut,
    LayerParts,
    NonUniformStructureError,
    UnsupportedArchitectureError,
)
from .structure import Structure, relative_keep

SUPPORTED = ("hidden", "layers")
_WHY_NOT = {
    "heads": "a CNN has no attention heads",
    "ffn": "a stock ResNetConfig has no field for a block's inner channels: it derives them from hidden_sizes "
           "(basic: hidden_sizes[s], bottleneck: hidden_sizes[s] // 4), so they are pruned with hidden",
    "budget": "budgets are not implemented for ResNet (a channel or a block costs differently in every stage); "
              "give hidden / layers targets",
    "unstructured": "unstructured masks cover Linear layers and ResNet has only its classifier",
    "n_m": "N:M masks cover Linear layers and ResNet has only its classifier",
}


def _classes():
    from transformers import ResNetBackbone, ResNetForImageClassification, ResNetModel

    return ResNetModel, ResNetForImageClassification, ResNetBackbone


@dataclass
class _Block:
    block: nn.Module
    stage: int
    position: int  # index within its stage
    stream_in: int
    stream_out: int

    @property
    def convs(self) -> list[nn.Module]:
        return list(self.block.layer)  # ResNetConvLayer: .convolution, .normalization

    @property
    def bottleneck(self) -> bool:
        return len(self.block.layer) == 3

    def inner_sizes(self) -> list[int]:
        return [c.convolution.out_channels for c in self.convs[:-1]]


@dataclass
class _Anatomy:
    stem: nn.Module  # ResNetConvLayer
    widths: list[int]  # per stream
    offsets: list[int]
    stage_stream: list[int]
    blocks: list[_Block]

    def span(self, t: int) -> tuple[int, int]:
        return self.offsets[t], self.widths[t]


@dataclass
class _StageShape:
    width: int  # channels written by the stage
    in_width: int  # channels its first block reads
    first_kept: bool
    depth: int
    inner: list[list[int]]  # per kept block
    bottleneck: bool
    conv_shortcut: bool
    stride: int


@register
class ResNetAdapter(ArchAdapter):
    family = "resnet"
    description = "ResNet (ResNetModel, ResNetForImageClassification)"
    model_types = ("resnet",)
    ffn_follows_hidden = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        try:
            classes = _classes()
        except ImportError:  # pragma: no cover
            return False
        return isinstance(model, classes)

    def __init__(self, model: nn.Module):
        super().__init__(model)
        base, clf, _ = _classes()
        if not isinstance(model, (base, clf)):
            raise UnsupportedArchitectureError(
                f"pruning does not support {type(model).__name__}: the feature maps it returns feed a detection / "
                "segmentation head that is not pruned with it; prune a ResNetForImageClassification or ResNetModel"
            )

    # ---------------------------------------------------------------- anatomy
    def backbone(self) -> nn.Module:
        base, _, _ = _classes()
        return self.model if isinstance(self.model, base) else self.model.resnet

    def _anatomy(self) -> _Anatomy:
        bb = self.backbone()
        stem = bb.embedder.embedder
        widths = [stem.convolution.out_channels]
        stage_stream, blocks = [], []
        prev = 0
        for s, stage in enumerate(bb.encoder.stages):
            first = stage.layers[0]
            if isinstance(first.shortcut, nn.Identity):
                t = prev  # the identity add ties the stage's output to its input
            else:
                widths.append(first.shortcut.convolution.out_channels)
                t = len(widths) - 1
            for p, block in enumerate(stage.layers):
                blocks.append(_Block(block, s, p, prev if p == 0 else t, t))
            stage_stream.append(t)
            prev = t
        offsets = [sum(widths[:t]) for t in range(len(widths))]
        return _Anatomy(stem, widths, offsets, stage_stream, blocks)

    def _block(self, layer: nn.Module) -> _Block:
        for b in self._anatomy().blocks:
            if b.block is layer:
                return b
        raise ValueError("not a block of this model")

    def layer_list(self) -> nn.ModuleList:
        return nn.ModuleList([layer for stage in self.backbone().encoder.stages for layer in stage.layers])

    def set_layer_list(self, layers: nn.ModuleList) -> None:
        keep = {id(layer) for layer in layers}
        for s, stage in enumerate(self.backbone().encoder.stages):
            kept = [layer for layer in stage.layers if id(layer) in keep]
            if not kept or kept[0] is not stage.layers[0]:
                raise NonUniformStructureError(f"stage {s} would lose its first block, which changes width and stride")
            stage.layers = nn.Sequential(*kept)

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        convs = list(layer.layer)
        return LayerParts(layer=layer, attn=None, fc1=convs[0].convolution, fc2=convs[-1].convolution, norms=[])

    def head_dim(self) -> int:
        return 0

    def num_heads(self, i: int) -> int:
        return 0

    def intermediate_size(self, i: int) -> int:
        return sum(self._anatomy().blocks[i].inner_sizes())

    def hidden_size(self) -> int:
        return sum(self._anatomy().widths)

    def required_layers(self) -> list[int]:
        return [j for j, b in enumerate(self._anatomy().blocks) if b.position == 0]

    # ------------------------------------------------------------------- cuts
    def head_cuts(self, i: int, parts: LayerParts | None = None) -> list[Cut]:
        return []

    def ffn_cuts(self, i: int, parts: LayerParts | None = None) -> list[Cut]:
        layer = parts.layer if parts is not None else self.layer_list()[i]
        convs = list(layer.layer)
        cuts, offset = [], 0
        for k in range(len(convs) - 1):  # inner set k: conv k's outputs, read by conv k + 1
            n = convs[k].convolution.out_channels
            cuts += [
                Cut(convs[k].convolution, 0, offset=offset, size=n),
                Cut(convs[k].normalization, 0, offset=offset, size=n),
                Cut(convs[k + 1].convolution, 1, offset=offset, size=n),
            ]
            offset += n
        return cuts

    def layer_hidden_cuts(self, parts: LayerParts) -> list[Cut]:
        an = self._anatomy()
        b = next(x for x in an.blocks if x.block is parts.layer)
        (oi, wi), (oo, wo) = an.span(b.stream_in), an.span(b.stream_out)
        convs = b.convs
        cuts = [Cut(convs[0].convolution, 1, offset=oi, size=wi)]
        sc = b.block.shortcut
        if not isinstance(sc, nn.Identity):
            cuts += [
                Cut(sc.convolution, 1, offset=oi, size=wi),
                Cut(sc.convolution, 0, offset=oo, size=wo),
                Cut(sc.normalization, 0, offset=oo, size=wo),
            ]
        cuts += [Cut(convs[-1].convolution, 0, offset=oo, size=wo), Cut(convs[-1].normalization, 0, offset=oo, size=wo)]
        return cuts

    def head_cuts_outside_layers(self) -> list[Cut]:
        an = self._anatomy()
        o, w = an.span(0)
        cuts = [Cut(an.stem.convolution, 0, offset=o, size=w), Cut(an.stem.normalization, 0, offset=o, size=w)]
        if self.model is self.backbone():
            return cuts
        head = self.model.classifier
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Sequential) else []
        if len(linears) == 1:
            o, w = an.span(an.stage_stream[-1])
            return cuts + [Cut(linears[0], 1, offset=o, size=w)]
        if isinstance(head, nn.Sequential) and all(isinstance(m, (nn.Flatten, nn.Identity)) for m in head):
            return cuts  # num_labels == 0
        raise UnsupportedArchitectureError(  # pragma: no cover - stock heads are handled above
            f"hidden pruning does not know the classifier of {type(self.model).__name__}"
        )

    def prunable_linears(self) -> dict[str, nn.Linear]:
        return {}

    def embedding_parameters(self) -> list[nn.Parameter]:
        return []  # no lookup tables

    def set_num_heads(self, attn: AttentionParts, num_heads: int) -> None:  # pragma: no cover - no heads
        raise UnsupportedArchitectureError("ResNet has no attention heads")

    def hidden_segments(self) -> list[tuple[int, int, int]]:
        an = self._anatomy()
        bottleneck_streams = {b.stream_out for b in an.blocks if b.bottleneck}
        # a bottleneck stage needs >= 4 channels, or its inner width (width // 4) would be 0
        return [(o, o + w, 4 if t in bottleneck_streams else 1)
                for t, (o, w) in enumerate(zip(an.offsets, an.widths))]

    def ffn_keep_for_hidden(self, hidden_keep: list[bool]) -> list[list[tuple[int, int, int]]]:
        an = self._anatomy()
        kept = [sum(hidden_keep[o:o + w]) for o, w in zip(an.offsets, an.widths)]
        out = []
        for b in an.blocks:
            k = kept[b.stream_out]
            want = k // 4 if b.bottleneck else k
            ranges, start = [], 0
            for n in b.inner_sizes():
                ranges.append((start, start + n, want))
                start += n
            out.append(ranges)
        return out

    def check_kinds(self, kinds: list[str]) -> None:
        bad = [k for k in kinds if k not in SUPPORTED]
        if bad:
            what = " or ".join(f"{k} ({_WHY_NOT.get(k, 'not supported')})" for k in bad)
            raise UnsupportedArchitectureError(
                f"{self.description} cannot prune {what}; supported kinds: hidden (the channels of "
                "each stage, with the blocks' inner channels) and layers (residual blocks, never the first of a stage)"
            )

    # -------------------------------------------------------------- structure
    def full_structure(self):
        an = self._anatomy()
        inner = [sum(b.inner_sizes()) for b in an.blocks]
        L, H = len(an.blocks), sum(an.widths)
        return Structure(
            L, 0, 0, max(inner), H, layers=list(range(L)), heads=[[] for _ in range(L)],
            ffn=[list(range(n)) for n in inner], hidden=list(range(H)),
        )

    def _shapes_from_modules(self) -> list[_StageShape]:
        an = self._anatomy()
        out = []
        for s, t in enumerate(an.stage_stream):
            blocks = [b for b in an.blocks if b.stage == s]
            first = blocks[0]
            sc = first.block.shortcut
            conv = not isinstance(sc, nn.Identity)
            out.append(_StageShape(
                width=an.widths[t], in_width=an.widths[first.stream_in], first_kept=True, depth=len(blocks),
                inner=[b.inner_sizes() for b in blocks], bottleneck=first.bottleneck, conv_shortcut=conv,
                stride=_stride(sc.convolution) if conv else 1,
            ))
        return out

    def _shapes_from_structure(self, structure) -> list[_StageShape]:
        """The stage shapes ``structure`` (a subset of the model's record) would leave."""
        rel = relative_keep(Structure.from_model(self.model, self), structure)
        an = self._anatomy()
        kept = [sum(rel.hidden[o:o + w]) for o, w in zip(an.offsets, an.widths)]
        out = []
        for s, t in enumerate(an.stage_stream):
            idx = [j for j, b in enumerate(an.blocks) if b.stage == s]
            first = an.blocks[idx[0]]
            inner = []
            for j in idx:
                if not rel.layers[j]:
                    continue
                counts, start = [], 0
                for n in an.blocks[j].inner_sizes():
                    counts.append(sum(rel.ffn[j][start:start + n]))
                    start += n
                inner.append(counts)
            sc = first.block.shortcut
            conv = not isinstance(sc, nn.Identity)
            out.append(_StageShape(
                width=kept[t], in_width=kept[first.stream_in], first_kept=rel.layers[idx[0]],
                depth=sum(rel.layers[j] for j in idx), inner=inner, bottleneck=first.bottleneck,
                conv_shortcut=conv, stride=_stride(sc.convolution) if conv else 1,
            ))
        return out

    @staticmethod
    def _problems(stages: list[_StageShape]) -> tuple[list[str], list[str]]:
        """``(cannot compact, cannot export)`` problems of the stage shapes."""
        hard, soft = [], []
        for s, st in enumerate(stages):
            if not st.first_kept:
                hard.append(f"stage {s} loses its first block, which changes width and stride: it always stays")
            if st.width < 1:
                hard.append(f"stage {s} keeps no channels")
            want = st.width // 4 if st.bottleneck else st.width
            odd = [(k, counts) for k, counts in enumerate(st.inner) if any(c != want for c in counts)]
            if any(min(counts, default=1) < 1 for counts in st.inner):
                hard.append(f"a block of stage {s} keeps no inner channels in one of its convs")
            if odd:
                k, counts = odd[0]
                kind = "bottleneck: hidden_sizes[s] // 4" if st.bottleneck else "basic: hidden_sizes[s]"
                soft.append(f"block {k} of stage {s} keeps {counts} inner channels but a stock config with "
                            f"hidden_sizes[{s}]={st.width} builds {want} ({kind}, not configurable)")
            stock_conv = st.in_width != st.width or st.stride != 1
            if st.conv_shortcut != stock_conv and st.width >= 1:
                soft.append(f"stage {s} reads {st.in_width} and writes {st.width} channels with stride {st.stride}: a "
                            f"stock config then builds {'a conv' if stock_conv else 'an identity'} shortcut, the model "
                            f"has {'a conv' if st.conv_shortcut else 'an identity'} one (keep embedding_size != "
                            "hidden_sizes[0])")
        return hard, soft

    def check_compactable(self, structure) -> None:
        hard, _ = self._problems(self._shapes_from_structure(structure))
        if hard:
            raise NonUniformStructureError(f"{self.description}: " + "; ".join(hard))

    def check_structure(self, structure) -> None:
        hard, soft = self._problems(self._shapes_from_structure(structure))
        if hard or soft:
            raise NonUniformStructureError(
                "a stock ResNetConfig cannot describe this structure: " + "; ".join(hard + soft))

    def stock_config_fits(self) -> bool:
        hard, soft = self._problems(self._shapes_from_modules())
        return not (hard or soft)

    def update_config(self, config: Any, structure, *, strict: bool = True) -> None:
        """Writes ``embedding_size``, ``hidden_sizes`` and ``depths`` read from the modules, which
        :func:`~pakd_hf.prune.compact` has already sliced to ``structure`` when it calls this."""
        stages = self._shapes_from_modules()
        an = self._anatomy()
        if sum(an.widths) != len(structure.hidden) or len(an.blocks) != len(structure.layers):
            raise RuntimeError("ResNetAdapter.update_config reads the compacted modules: compact the model to "
                               f"the structure first ({structure.describe()})")
        if strict:
            hard, soft = self._problems(stages)
            if hard or soft:
                raise NonUniformStructureError("a stock ResNetConfig cannot describe the model: " + "; ".join(hard + soft))
        config.embedding_size = an.widths[0]
        config.hidden_sizes = [st.width for st in stages]
        config.depths = [st.depth for st in stages]

    # ------------------------------------------------------------ checkpoints
    @classmethod
    def checkpoint_problems(cls, config: dict, shapes: dict[str, list[int]]) -> list[str]:
        import torch
        from transformers import ResNetConfig

        base, clf, _ = _classes()
        arch = (config.get("architectures") or [""])[0]
        model_cls = base if arch == "ResNetModel" or not any(k.startswith("classifier.") for k in shapes) else clf
        cfg = ResNetConfig.from_dict({k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
        with torch.device("meta"):
            expected = {k: list(v.shape) for k, v in model_cls(cfg).state_dict().items()}
        problems = []
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        if missing:
            problems.append(f"config implies tensors the folder lacks: {', '.join(missing[:4])}"
                            f"{' ...' if len(missing) > 4 else ''} (depths {cfg.depths})")
        if extra:
            problems.append(f"tensors the config does not build: {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}"
                            f" (depths {cfg.depths})")
        for k in sorted(set(expected) & set(shapes)):
            if expected[k] != list(shapes[k]):
                problems.append(f"{k}: shape {list(shapes[k])}, config implies {expected[k]} "
                                f"(embedding_size {cfg.embedding_size}, hidden_sizes {cfg.hidden_sizes})")
        return problems

    @classmethod
    def structure_problems(cls, config: dict, structure) -> list[str]:
        s = structure
        e, hs, depths = config["embedding_size"], list(config["hidden_sizes"]), list(config["depths"])
        bottleneck = config.get("layer_type", "bottleneck") == "bottleneck"
        stem_separate = e != hs[0] or bool(config.get("downsample_in_first_stage", False))
        problems = []
        if s.num_heads or any(s.heads):
            problems.append("pakd.json structure has attention heads; ResNet has none")
        if len(s.layers) != sum(depths):
            problems.append(f"pakd.json structure keeps {len(s.layers)} blocks, config.json depths {depths} sum to {sum(depths)}")
        hidden = (e if stem_separate else 0) + sum(hs)
        if len(s.hidden) != hidden:
            problems.append(f"pakd.json structure keeps {len(s.hidden)} channels, config.json implies {hidden} "
                            f"(embedding_size {e}{'' if stem_separate else ' tied to stage 0'}, hidden_sizes {hs})")
        want = [2 * (w // 4) if bottleneck else w for w, d in zip(hs, depths) for _ in range(d)]
        if len(s.layers) == sum(depths) and s.ffn_per_layer() != want:
            problems.append(f"pakd.json structure keeps {s.ffn_per_layer()} inner channels per block, config.json "
                            f"implies {want}")
        return problems


def _stride(conv: nn.Conv2d) -> int:
    st = conv.stride
    return int(st[0] if isinstance(st, tuple) else st)
