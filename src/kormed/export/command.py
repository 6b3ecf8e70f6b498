"""Command `kormed export` (--merge, --gguf; no torch/transformers imports at module level)."""

from __future__ import annotations

import typer

from kormed.errors import KormedError

# torch, transformers and the kormed modules that load them are imported inside the functions that use them:
# this module is imported by `kormed --help` or by a torch-free command, which must not pay for them.


def register(app: typer.Typer, subapps: dict[str, typer.Typer]) -> None:
    @app.command("export")
    def export(
        adapter: str = typer.Option(None, "--adapter", help="kormed adapter directory (adapter_config.json)."),
        out: str = typer.Option(None, "--out", help="Output directory (staged, then renamed into place)."),
        merge: bool = typer.Option(False, "--merge", help="Write the merged full HF model directory to --out."),
        gguf: bool = typer.Option(False, "--gguf", help="Write GGUF files (llama.cpp's converter) to --out."),
        gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF types, comma-separated: f16, bf16, q8_0 (the "
                                                               "converter); q4_k_m, q4_0, q5_k_m, q6_k (llama.cpp's "
                                                               "quantizer: pip install 'kormed[gguf-quant]')."),
        model: str = typer.Option(None, "--model", help="Base model (default: the adapter's); without --adapter: "
                                                         "the (merged) model to convert."),
        verify: bool = typer.Option(False, "--verify", help="Load each GGUF with llama.cpp (and transformers) and "
                                                         "compare tokens with the merged model."),
        fetch_converter: bool = typer.Option(
            False, "--fetch-converter", help="Install llama.cpp's GGUF converter once (pip downloads the "
                                             "llama-cpp-python sdist); exports themselves never download."),
    ) -> None:
        """Merge an adapter into a full HF model and/or write GGUF files; a model card README.md comes with both."""
        def log(message: str) -> None:
            typer.echo(message, err=True)

        if fetch_converter:
            from kormed.export.gguf import fetch_converter as fetch

            typer.echo(f"llama.cpp GGUF converter: {fetch(log=log)}")
            if not merge and not gguf:
                return
        if not merge and not gguf:
            raise KormedError("nothing to export: pass --merge and/or --gguf (or --fetch-converter)")
        if out is None:
            raise KormedError("--out is required: the directory to write the export to")
        if adapter is None and model is None:
            raise KormedError("pass --adapter (and optionally --model), or --model with a model directory")
        from kormed.export.run import run_export

        report = run_export(adapter=adapter, out=out, model=model, merge=merge, gguf=gguf, gguf_types=gguf_type,
                            verify=verify, log=log)
        for line in report["summary"]:
            typer.echo(line)
