"""Export a sentence-transformers encoder to one ONNX graph: token ids in, L2-normalised mean-pooled vectors out.

    python -m rag.onnx_export          # the configured EMBEDDING_MODEL (default: the bundled all-MiniLM-L6-v2)

`make install` runs this once; the service runs it itself on first start if the file is missing. It is the only
place that imports torch on the default path, and only while exporting. The graph holds the whole
sentence-transformers pipeline of mean-pooling models (BERT encoder, mean over the attention mask, L2 norm), so at
serving time onnxruntime and `tokenizers` are all that is needed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

from rag.errors import EmbeddingError

logger = logging.getLogger(__name__)

OPSET = 17


def onnx_file(directory: Path, model_name: str) -> Path:
    """Where the graph of `model_name` is kept."""
    return directory / (re.sub(r"[^A-Za-z0-9._-]+", "_", model_name) + ".onnx")


def check_mean_pooling(model_dir: Path) -> None:
    pooling = model_dir / "1_Pooling" / "config.json"
    try:
        config = json.loads(pooling.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbeddingError(
            f"{model_dir} has no readable 1_Pooling/config.json: the ONNX backend exports sentence-transformers "
            "models with mean pooling; set EMBEDDER_BACKEND=torch for this model"
        ) from exc
    if not config.get("pooling_mode_mean_tokens"):
        raise EmbeddingError(f"{model_dir} does not pool by mean; set EMBEDDER_BACKEND=torch for this model")


def export(model_dir: Path, target: Path) -> None:
    """Write the graph to `target` atomically (a temp file renamed), so a crash never leaves half a model."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    check_mean_pooling(model_dir)
    encoder = AutoModel.from_pretrained(str(model_dir))
    encoder.eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sample = tokenizer(["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        # The TorchScript exporter warns that it is the legacy one, and about index ops it exports correctly here.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                SentenceEncoder(),
                (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
                tmp,
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["embedding"],
                dynamic_axes={
                    "input_ids": axes,
                    "attention_mask": axes,
                    "token_type_ids": axes,
                    "embedding": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: it needs neither onnxscript nor a network
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("exported %s to %s", model_dir, target)


def main() -> None:
    from config import get_settings
    from rag.embedder import resolve_model_path

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    target = onnx_file(settings.onnx_dir, settings.embedding_model)
    if target.exists():
        print(f"{target} exists")
        return
    export(Path(resolve_model_path(settings.embedding_model)), target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
