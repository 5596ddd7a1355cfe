"""Render an initialization's README.md as a model hub shows a model card (metadata chips from the YAML front matter
above the rendered markdown) and screenshot it with headless Debian chromium (`apt-get install chromium`).

    python tools/model_card_screenshot.py src/fewshotseg/inits/general/README.md docs/model_card.png

Needs `markdown` and `playwright` (the test extra has playwright).
"""

import html
import shutil
import sys
from pathlib import Path

import markdown
import yaml
from playwright.sync_api import sync_playwright

readme = Path(sys.argv[1]).read_text()
out = Path(sys.argv[2])
assert readme.startswith("---\n")
end = readme.index("\n---\n", 4)
meta = yaml.safe_load(readme[4:end])
body = readme[end + 5:]
chips = []
def chip(label, value, cls=""):
    chips.append(f'<span class="chip {cls}"><b>{html.escape(label)}</b> {html.escape(str(value))}</span>')
chip("Task", meta["pipeline_tag"], "task")
chip("Library", meta["library_name"], "lib")
for d in meta.get("datasets", []):
    chip("Dataset", d, "data")
chip("License", meta["license"], "lic")
for t in meta.get("tags", []):
    chip("", t)
for m in meta.get("metrics", []):
    chip("Metric", m)
rendered = markdown.markdown(body, extensions=["tables", "fenced_code"])
page = f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font-family: "DejaVu Sans", sans-serif; color: #1f2937; margin: 0; background: #fff; font-size: 14px; }}
header {{ border-bottom: 1px solid #e5e7eb; padding: 18px 40px 14px; background: linear-gradient(#f9fafb, #fff); }}
header h1 {{ font-size: 20px; margin: 0 0 10px; }} header h1 span {{ color: #6b7280; font-weight: normal; }}
.chip {{ display: inline-block; border: 1px solid #e5e7eb; border-radius: 6px; padding: 2px 8px; margin: 0 6px 6px 0;
        font-size: 12px; background: #fff; }}
.chip b {{ color: #6b7280; font-weight: normal; }} .task {{ background: #fef3c7; }} .lic {{ background: #fee2e2; }}
.lib {{ background: #e0e7ff; }} .data {{ background: #dcfce7; }}
main {{ max-width: 1000px; padding: 10px 40px 40px; line-height: 1.55; }}
h1 {{ font-size: 26px; }} h2 {{ font-size: 19px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; margin-top: 28px; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 8px 0; }}
th, td {{ border: 1px solid #e5e7eb; padding: 4px 8px; vertical-align: top; }} th {{ background: #f9fafb; }}
code {{ background: #f3f4f6; padding: 1px 4px; border-radius: 4px; font-size: 12px; }}
pre {{ background: #f3f4f6; padding: 10px 14px; border-radius: 6px; overflow-x: auto; }} pre code {{ padding: 0; }}
</style></head><body><header><h1><span>fewshotseg /</span> {html.escape(body.split(chr(10), 2)[1].lstrip("# "))}</h1>
{"".join(chips)}</header><main>{rendered}</main></body></html>"""
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
    tab = browser.new_page(viewport={"width": 1080, "height": 900})
    tab.set_content(page)
    tab.screenshot(path=str(out), full_page=True)
    browser.close()
print(out)
