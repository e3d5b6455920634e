"""The page at `/`: one tile per stream with its latest output frame and its status.

Plain HTML and a few lines of script (no build step, no external files): it polls
/api/streams every second and reloads each tile's JPEG. The toggle shows the bicubic x4 of the
input frame instead of the model's output, to see what the model adds.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamsr serve</title>
<style>
body { font-family: sans-serif; background: #111; color: #eee; margin: 1em; }
#tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1em; }
.tile { background: #222; border-radius: 6px; padding: .5em; }
.tile img { width: 100%; background: #000; min-height: 120px; display: block; }
.name { font-weight: bold; } .state { float: right; }
.running { color: #6c6; } .failed, .down { color: #e55; } .starting, .ended, .stopped { color: #cc6; }
.stats { font-size: 80%; color: #aaa; margin-top: .3em; }
</style></head>
<body>
<h1>streamsr serve <label style="font-size:60%"><input type="checkbox" id="bicubic">
 bicubic (instead of the model)</label></h1>
<div id="engine" class="stats"></div>
<div id="tiles"></div>
<script>
const token = new URLSearchParams(location.search).get("token");
const q = token ? "token=" + encodeURIComponent(token) + "&" : "";
const tiles = document.getElementById("tiles");
function tile(name) {
  let t = document.getElementById("tile-" + name);
  if (!t) {
    t = document.createElement("div"); t.className = "tile"; t.id = "tile-" + name;
    t.innerHTML = '<span class="name"></span><span class="state"></span><img alt="">' +
                  '<div class="stats"></div>';
    t.querySelector(".name").textContent = name;
    tiles.appendChild(t);
  }
  return t;
}
async function refresh() {
  try {
    const r = await fetch("/api/streams?" + q);
    const data = await r.json();
    const view = document.getElementById("bicubic").checked ? "bicubic" : "model";
    const names = new Set();
    for (const s of data.streams) {
      names.add("tile-" + s.name);
      const t = tile(s.name);
      const state = s.down ? "down" : s.state;
      const st = t.querySelector(".state"); st.textContent = state; st.className = "state " + state;
      if (s.frames_out > 0)
        t.querySelector("img").src = "/tile/" + encodeURIComponent(s.name) + ".jpg?" + q +
                                     "view=" + view + "&n=" + s.frames_out;
      const d = s.drops;
      t.querySelector(".stats").textContent =
        `in ${s.fps_in.toFixed(1)} fps, out ${s.fps_out.toFixed(1)} fps, latency ${s.latency_s.toFixed(2)} s, ` +
        `dropped ${d.queue + d.late + d.output + d.stop}, reconnects ${s.reconnects}` +
        (s.reason && s.state !== "running" ? " - " + s.reason : "");
    }
    for (const t of [...tiles.children]) if (!names.has(t.id)) t.remove();
    const e = data.engine;
    document.getElementById("engine").textContent =
      `engine: ${e.backend} on ${e.device}, batch ${e.batch}, ` +
      `fill ${(100 * e.batch_fill_mean).toFixed(0)} %, ${e.frames} frames, ` +
      `model ${e.model_seconds.toFixed(1)} s`;
  } catch (err) { document.getElementById("engine").textContent = "no answer: " + err; }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
