"""CASS and its family in the browser: your image, any classes, any method (Gradio).

    python app.py                          # http://127.0.0.1:7860
    python app.py --port 8080 --clip-path ViT-B-16.pt --vfm-path dino_vitbase8_pretrain.pth
    python app.py --host 0.0.0.0 --device cuda    # reachable from other machines
    python app.py --share                  # also a temporary public link through Gradio's share servers
    python app.py --protocol cass          # every method with the benchmark configs' settings (CASS's)

Weights come from the same flags and defaults as ``demo.py``: local files, or
the public releases downloaded once; other backbones are offered when their
release files are in the weights cache. A method runs with its published
settings for the chosen benchmark (``--protocol published``, the default: the
preset menu shows them) or with the benchmark configs' (``--protocol cass``),
as ``eval.py --protocol`` applies them. Each (method, CLIP, VFM) model is
built on first use and kept; it serves one request at a time while the others
wait their turn, told their place. The work is :mod:`cass.webapp`'s; this file
draws the page. ``docs/app.md`` has the details.
"""
from __future__ import annotations

import argparse
import atexit
import html
import logging
import shutil
import sys
import tempfile
from pathlib import Path


from cass.cli import add_model_arguments, check_model_arguments
from cass.methods import METHODS
from cass.webapp import EXAMPLES, NO_MASKS, Engine, Options, Request, class_heatmap, legend_html, user_message

try:
    import gradio as gr
    from gradio.utils import get_upload_folder
except ImportError:
    sys.exit("app.py: gradio is not installed: pip install -e .[app] (bash scripts/setup.sh installs it)")

PROG = "app.py"
CSS = """
.cass-legend { list-style: none; padding: 0; margin: 0; columns: 2; }
.cass-legend li { margin: 2px 0; break-inside: avoid; }
.cass-legend .swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
                       vertical-align: middle; border: 1px solid #0003; }
.cass-legend .share { color: var(--body-text-color-subdued); }
.cass-status { padding: 0.4em 0.6em; border-radius: 6px; background: var(--block-background-fill); }
.cass-status.error { color: #b00020; border: 1px solid #b0002055; }
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="A web page that segments your images with CASS and "
                                                            "its family, with your own class names.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860, Gradio's)")
    parser.add_argument("--share", action="store_true",
                        help="also create a temporary public link through Gradio's share servers")
    add_model_arguments(parser, protocol="published")
    parser.add_argument("--max-models", type=int, default=3,
                        help="models kept built at once; the least recently used beyond are dropped (default: 3)")
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    if args.max_models < 1:
        parser.error(f"--max-models must be at least 1, got {args.max_models}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must lie in 1..65535, got {args.port}")
    return args


def options_from(args: argparse.Namespace) -> Options:
    return Options(config=None if args.config is None else str(args.config), clip_path=args.clip_path,
                   vfm_path=args.vfm_path, sam_path=args.sam_path, mask_path=args.mask_path, device=args.device,
                   precision=args.precision, protocol=args.protocol,
                   cfg_options=dict(args.cfg_options or {}), max_models=args.max_models, opacity=args.opacity)


def status_html(text: str, error: bool = False) -> str:
    kind = "cass-status error" if error else "cass-status"
    return f'<div class="{kind}">{"⚠ " if error else ""}{html.escape(text)}</div>'


def vfm_state(engine: Engine, method_name: str) -> dict:
    """The VFM menu's settings: usable only for a method that uses a VFM."""
    uses = method_name in METHODS and engine.uses_vfm(method_name)
    return dict(interactive=uses, info=None if uses else f"{method_name} uses no VFM")


def method_changed(engine: Engine, method_name: str, preset_name: str | None, vocabulary_name: str | None,
                   classes: str, filled: str | None) -> tuple:
    """The page's updates when another method is chosen, for (VFM menu, preset menu, threshold, classes,
    the classes the vocabulary menu filled in last, region-mask menu).

    The preset menu offers the method's settings for each benchmark (with
    ``--protocol published`` its own: windows, short side, threshold, class
    file) and keeps the chosen benchmark; the threshold becomes that preset's;
    the VFM menu is usable for a method that uses a VFM and selects the one
    the preset names when its weights are here; classes that the vocabulary
    menu filled in (not edited since) become the method's class file for it;
    the region-mask menu selects the method's generator (CorrCLIP's SAM2), or none.
    """
    if method_name not in METHODS:
        return (gr.skip(),) * 6
    presets = engine.presets_for(method_name)
    name = preset_name if preset_name in presets else engine.default_preset
    vfm = vfm_state(engine, method_name)
    chosen = engine.vfm_for(method_name, name) if vfm["interactive"] else None
    if chosen is not None:
        vfm["value"] = chosen
    text = gr.skip()
    if vocabulary_name in presets and filled is not None and classes == filled:
        text = filled = presets[vocabulary_name].classes_text()
    return (gr.update(**vfm), gr.update(choices=[(p.label, n) for n, p in presets.items()], value=name),
            presets[name].prob_thd, text, filled, engine.default_masks(method_name, name))


def build_page(engine: Engine) -> gr.Blocks:
    """The page: inputs on the left, results on the right; every handler is a thin call into ``engine``."""
    presets = engine.presets_for(engine.default_method)
    default_preset = presets[engine.default_preset]
    clips = [name for name, weights in engine.clips.items() if weights.available]
    vfms = [name for name, weights in engine.vfms.items() if weights.available]
    examples = engine.example_images()

    def segment(image: dict | None, classes: str, method: str, clip: str, vfm: str, preset: str, prob_thd: float,
                pamr: bool, masks: str, progress: gr.Progress = gr.Progress()) -> tuple:
        # preprocess=False: the image arrives as Gradio's file record and is read by cass (one-line errors)
        cleared = (None, "", gr.update(value=None, visible=False), gr.update(choices=[], value=None), None, "", None,
                   None)
        if not image or not image.get("path"):
            return status_html("no image: upload one, paste one, use the webcam or pick an example", True), *cleared
        path = image["path"]
        name = image.get("orig_name") or Path(path).name
        try:
            request = Request(Path(path), name, classes or "", method, clip, vfm, preset, float(prob_thd), bool(pamr),
                              masks or NO_MASKS)
            outcome = engine.run(request, lambda fraction, message: progress(fraction, desc=message))
            names = outcome.result.class_names
            top = outcome.legend[0].name
            probs_file = str(outcome.files[1])
            heat, heat_line = class_heatmap(probs_file, path, names, top)
        except Exception as err:  # noqa: BLE001 - any failure is one line in the page; the server goes on
            return status_html(user_message(err, {path: name}), True), *cleared
        state = dict(probs=probs_file, image=path, name=name, classes=names)
        regions = gr.update(value=outcome.regions, visible=outcome.regions is not None)  # shown with masks only
        return (status_html(outcome.summary), outcome.picture, legend_html(outcome.legend), regions,
                gr.update(choices=names, value=top), heat, status_html(heat_line), [str(f) for f in outcome.files],
                state)

    def show_heatmap(state: dict | None, name: str) -> tuple:
        if not state or not name:
            return None, ""
        try:
            heat, line = class_heatmap(state["probs"], state["image"], state["classes"], name)
        except Exception as err:  # noqa: BLE001
            return None, status_html(user_message(err, {state["image"]: state["name"]}), True)
        return heat, status_html(line)

    with gr.Blocks(title="CASS: segment your images", analytics_enabled=False, delete_cache=(1800, 3600)) as page:
        gr.Markdown("## CASS and its family: open-vocabulary segmentation of your images\n"
                    "An image and the classes to find in it; training-free methods on CLIP "
                    "(and a vision foundation model). The first request of a model loads its weights.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", sources=["upload", "clipboard", "webcam"], type="filepath",
                                 elem_id="input-image", height=320)
                classes = gr.Textbox(label="Classes", value=EXAMPLES["astronaut"], lines=2, max_lines=10,
                                     elem_id="classes",
                                     info="comma-separated on one line, or one class per line with its synonyms "
                                          "(dog, puppy) as in a class file")
                vocabulary = gr.Dropdown(label="or a benchmark's vocabulary", choices=list(presets), value=None,
                                         elem_id="vocabulary")
                method = gr.Dropdown(label="Method", choices=[(f"{m}: {METHODS[m].title}", m) for m in METHODS],
                                     value=engine.default_method, elem_id="method")
                with gr.Row():
                    clip = gr.Dropdown(label="CLIP", choices=clips, value=engine.default_clip, elem_id="clip")
                    vfm = gr.Dropdown(label="VFM", choices=vfms, value=engine.default_vfm, elem_id="vfm",
                                      **vfm_state(engine, engine.default_method))
                masks = gr.Dropdown(label="Region masks", elem_id="masks",
                                    choices=[(label, value) for value, label in engine.mask_choices.items()],
                                    value=engine.default_masks(engine.default_method, engine.default_preset),
                                    info="class-agnostic regions (SAM2 downloads its weights once): CorrCLIP's "
                                         "input; with any other method each region takes its majority class")
                with gr.Accordion("Settings", open=True):
                    preset = gr.Dropdown(label="Windows and input size (the method's, per benchmark)",
                                         elem_id="preset",
                                         choices=[(p.label, name) for name, p in presets.items()],
                                         value=engine.default_preset)
                    with gr.Row():
                        prob_thd = gr.Slider(0, 1, value=default_preset.prob_thd, step=0.01, elem_id="threshold",
                                             label="Probability threshold",
                                             info="pixels whose top probability is lower get the first class")
                        pamr = gr.Checkbox(label="PAMR", value=False, elem_id="pamr",
                                           info="refine the logits with the image (slower)")
                run = gr.Button("Segment", variant="primary", elem_id="run")
                gr.Examples(examples=[[str(path), text] for path, text in examples], inputs=[image, classes],
                            label="Examples (scikit-image's photos)")
                missing = engine.missing_weights()
                if missing:
                    with gr.Accordion("Backbones without weights here", open=False):
                        gr.Markdown("\n".join(f"- {line}" for line in missing))
            with gr.Column(scale=1):
                status = gr.HTML(elem_id="status")
                overlay = gr.Image(label="Overlay", format="png", interactive=False, elem_id="overlay", height=360)
                legend = gr.HTML(elem_id="legend")
                regions = gr.Image(label="Region masks (uncovered pixels in grey)", format="png", interactive=False,
                                   elem_id="regions", height=360, visible=False)
                heat_class = gr.Dropdown(label="Probability of", choices=[], value=None, elem_id="heatmap-class")
                heat = gr.Image(label="Heat map (inferno: 0 black, 1 yellow)", format="png", interactive=False,
                                elem_id="heatmap", height=360)
                heat_status = gr.HTML(elem_id="heatmap-status")
                files = gr.File(label="Downloads: labels PNG, probabilities .npy, legend JSON, region masks .npz",
                                file_count="multiple",
                                interactive=False, elem_id="downloads")
        result = gr.State(None)
        filled = gr.State(None)  # the classes the vocabulary menu filled in last

        def fill_vocabulary(name: str, method_name: str) -> tuple:
            if method_name not in METHODS or name not in engine.presets_for(method_name):
                return gr.skip(), gr.skip()
            text = engine.preset(method_name, name).classes_text()  # the method's class file for it
            return text, text

        def preset_threshold(name: str, method_name: str) -> float | dict:
            if method_name not in METHODS or name not in engine.presets_for(method_name):
                return gr.skip()
            return engine.preset(method_name, name).prob_thd

        vocabulary.input(fill_vocabulary, [vocabulary, method], [classes, filled], queue=False)
        preset.input(preset_threshold, [preset, method], prob_thd, queue=False)
        method.input(lambda *values: method_changed(engine, *values), [method, preset, vocabulary, classes, filled],
                     [vfm, preset, prob_thd, classes, filled, masks], queue=False)
        run.click(segment, [image, classes, method, clip, vfm, preset, prob_thd, pamr, masks],
                  [status, overlay, legend, regions, heat_class, heat, heat_status, files, result], preprocess=False,
                  concurrency_limit=None, api_name="segment")
        heat_class.input(show_heatmap, [result, heat_class], [heat, heat_status], api_name="heatmap")
    return page


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    out_dir = Path(tempfile.mkdtemp(prefix="cass-app-", dir=_upload_folder()))  # Gradio serves it without a copy
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    try:
        engine = Engine(options_from(args), out_dir)
        page = build_page(engine)
    except (ValueError, OSError) as err:
        print(f"{PROG}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"{PROG}: methods {', '.join(engine.methods)}; device {args.device}; "
          f"{len(engine.missing_weights())} backbones without weights here", file=sys.stderr, flush=True)
    try:
        page.queue(max_size=64).launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS,
                                       show_error=False, quiet=False)
    except OSError as err:  # the port is taken
        print(f"{PROG}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _upload_folder() -> Path:
    folder = Path(get_upload_folder())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


if __name__ == "__main__":
    sys.exit(main())
