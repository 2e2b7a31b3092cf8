// emoengine report.html: synced videos, timeline lanes with a playhead, seeking, keyboard. No framework, no fetches.
"use strict";

// One seek at a time per video: a new target while one is under way waits for its "seeked" (Chromium can leave a
// video seeking for good when targets pile up, e.g. three arrow presses in a row), and only the last one counts.
const pendingSeek = new WeakMap();
function seekVideo(v, t) {
  if (v.seeking) { pendingSeek.set(v, t); return; }
  pendingSeek.delete(v);
  v.currentTime = t;
}
function onSeeked(v) {
  if (!pendingSeek.has(v) || v.seeking) return;   // a late event of an earlier seek: wait for the current one
  const t = pendingSeek.get(v);
  pendingSeek.delete(v);
  if (Math.abs(v.currentTime - t) > 1e-4) v.currentTime = t;
}

// -- the clock: the first video's (the annotated one) while playing, else the time last sought ----------------
function makePlayer(fps, duration, onChange) {
  const videos = Array.from(document.querySelectorAll("video.synced"));
  const p = { videos: videos, master: videos[0] || null, fps: fps, duration: duration, t: 0 };
  p.playing = function () { return p.master !== null && !p.master.paused && !p.master.ended; };
  p.now = function () { return p.playing() ? p.master.currentTime : p.t; };
  p.clamp = function (t) { return Math.min(Math.max(t, 0), Math.max(duration - 1 / fps, 0)); };
  p.seek = function (t) {
    p.t = p.clamp(t);
    videos.forEach(function (v) { seekVideo(v, p.t); });
    onChange();
  };
  videos.forEach(function (v) { v.addEventListener("seeked", function () { onSeeked(v); }); });
  p.play = function () {
    if (!p.master) return;
    if (p.master.ended || p.now() >= duration - 1 / fps) p.seek(0);
    const t = p.now();
    videos.forEach(function (v) {
      if (Math.abs(v.currentTime - t) > 0.5 / fps) seekVideo(v, t);
      const started = v.play();
      if (started && started.catch) started.catch(function () { /* a codec this browser lacks: others play */ });
    });
    requestAnimationFrame(function tick() {
      keepInSync(p);
      onChange();
      if (p.playing()) requestAnimationFrame(tick);
    });
  };
  p.pause = function () {
    const t = p.now();
    videos.forEach(function (v) { v.pause(); });
    p.seek(t);   // followers land on the master's frame
  };
  p.toggle = function () { if (p.playing()) p.pause(); else p.play(); };
  p.step = function (frames) {
    if (p.playing()) p.pause();
    p.seek((Math.round(p.now() * fps) + frames) / fps);
  };
  if (p.master) {
    ["seeked", "pause", "play", "loadeddata"].forEach(function (e) { p.master.addEventListener(e, onChange); });
    p.master.addEventListener("ended", function () {
      p.t = p.master.currentTime;
      videos.forEach(function (v) { v.pause(); });
      onChange();
    });
  }
  return p;
}

// while playing: a follower that drifts more than two frames from the master is put back on it
function keepInSync(p) {
  const t = p.now();
  p.videos.forEach(function (v) {
    if (v === p.master || v.seeking) return;
    if (Math.abs(v.currentTime - t) > 2 / p.fps) seekVideo(v, t);
    if (v.paused && p.playing() && !v.ended) v.play().catch(function () {});
  });
}

function clockText(t) {
  const m = Math.floor(t / 60), s = t - 60 * m;
  return m + ":" + (s < 10 ? "0" : "") + s.toFixed(2);
}

// -- buttons, seek bar, enlarging, keyboard ---------------------------------------------------------------
function bindControls(p) {
  const byId = function (id) { return document.getElementById(id); };
  const on = function (id, handler) { const el = byId(id); if (el) el.addEventListener("click", handler); };
  on("play", p.toggle);
  on("frame-back", function () { p.step(-1); });
  on("frame-fwd", function () { p.step(1); });
  const seekBar = byId("seek");
  if (seekBar) seekBar.addEventListener("input", function () { p.seek(parseFloat(seekBar.value)); });
  document.querySelectorAll(".enlarge").forEach(function (b) {
    b.addEventListener("click", function () { b.closest(".tile").classList.toggle("enlarged"); });
  });
  p.videos.forEach(function (v) {
    v.addEventListener("dblclick", function () { v.closest(".tile").classList.toggle("enlarged"); });
    v.addEventListener("click", p.toggle);
  });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === " " || e.code === "Space") { e.preventDefault(); p.toggle(); }
    else if (e.key === "ArrowRight") { e.preventDefault(); p.step(1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); p.step(-1); }
  });
  document.addEventListener("keyup", function (e) {   // a focused button would take space as a second click
    if (e.key === " " || e.code === "Space") e.preventDefault();
  });
  return function update() {
    const t = p.now();
    if (seekBar) seekBar.value = t;
    const clock = byId("clock"), play = byId("play");
    if (clock) clock.textContent = clockText(t) + " / " + clockText(p.duration) + " · frame " + Math.round(t * p.fps);
    if (play) play.textContent = p.playing() ? "❚❚ pause" : "▶ play";
  };
}

// -- timeline data: delta-encoded milliseconds and integers × scale (see engine/report/rundata.py) ---------
function decodeFace(f, scale) {
  const values = function (ints) { return ints ? ints.map(function (x) { return x / scale; }) : null; };
  let acc = 0;
  const t = f.t.map(function (d) { acc += d; return acc / 1000; });
  return { id: f.id, t: t, p: f.p.map(values), v: values(f.v), a: values(f.a),
           vmin: values(f.vmin), vmax: values(f.vmax), amin: values(f.amin), amax: values(f.amax) };
}

// a face unseen for longer than a point's span: the line breaks there
function isGap(face, i, maxStep) { return i > 0 && face.t[i] - face.t[i - 1] > maxStep; }

function strokeSeries(ctx, face, ys, x, y, maxStep) {
  ctx.beginPath();
  for (let i = 0; i < face.t.length; i++) {
    if (i === 0 || isGap(face, i, maxStep)) ctx.moveTo(x(face.t[i]), y(ys[i]));
    else ctx.lineTo(x(face.t[i]), y(ys[i]));
  }
  ctx.stroke();
}

function fillBand(ctx, face, lo, hi, x, y, maxStep) {
  let start = 0;
  for (let i = 1; i <= face.t.length; i++) {
    if (i < face.t.length && !isGap(face, i, maxStep)) continue;
    ctx.beginPath();
    for (let k = start; k < i; k++) ctx.lineTo(x(face.t[k]), y(hi[k]));
    for (let k = i - 1; k >= start; k--) ctx.lineTo(x(face.t[k]), y(lo[k]));
    ctx.closePath();
    ctx.fill();
    start = i;
  }
}

function canvas2d(canvas) {
  const r = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * r);
  canvas.height = Math.round(h * r);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(r, 0, 0, r, 0, 0);
  return { ctx: ctx, w: w, h: h };
}

// one face's lane: probabilities (0 to 1) above, valence and arousal (−R to R) below
function drawLane(canvas, face, data, maxStep) {
  const c = canvas2d(canvas), ctx = c.ctx, R = data.va_range;
  const x = function (t) { return t / data.duration * c.w; };
  const pTop = 4, pH = c.h * 0.5, vTop = pTop + pH + 8, vH = c.h - vTop - 4;
  const py = function (v) { return pTop + (1 - v) * pH; };
  const vy = function (v) { return vTop + (1 - (Math.max(-R, Math.min(R, v)) + R) / (2 * R)) * vH; };
  ctx.fillStyle = "#f3f3f1";
  ctx.fillRect(0, pTop, c.w, pH);
  ctx.fillRect(0, vTop, c.w, vH);
  ctx.strokeStyle = "#c9c9c5";
  ctx.beginPath(); ctx.moveTo(0, vy(0)); ctx.lineTo(c.w, vy(0)); ctx.stroke();
  ctx.fillStyle = "#9a9a9e"; ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "middle";
  [["p 1", py(1) + 5], ["p 0", py(0) - 5], ["+" + R, vy(R) + 5], ["0", vy(0)], ["−" + R, vy(-R) - 5]]
    .forEach(function (m) { ctx.fillText(m[0], c.w - 24, m[1]); });
  ctx.lineWidth = 1.25;
  face.p.forEach(function (ys, k) {
    ctx.strokeStyle = data.palette[k % data.palette.length];
    strokeSeries(ctx, face, ys, x, py, maxStep);
  });
  [["v", data.va_colours.valence], ["a", data.va_colours.arousal]].forEach(function (s) {
    const key = s[0];
    if (face[key + "min"]) {
      ctx.globalAlpha = 0.18; ctx.fillStyle = s[1];
      fillBand(ctx, face, face[key + "min"], face[key + "max"], x, vy, maxStep);
      ctx.globalAlpha = 1;
    }
    ctx.strokeStyle = s[1];
    strokeSeries(ctx, face, face[key], x, vy, maxStep);
  });
}

function drawAxis(canvas, duration) {
  const c = canvas2d(canvas), ctx = c.ctx;
  const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const every = steps.find(function (s) { return duration / s <= c.w / 90; }) || 7200;
  ctx.fillStyle = "#6b6b70"; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "top";
  for (let t = 0; t <= duration; t += every) {
    const px = t / duration * c.w;
    ctx.fillRect(px, 0, 1, 5);
    ctx.fillText(clockText(t).replace(/\.00$/, ""), Math.min(px + 2, c.w - 40), 6);
  }
}

// the point shown at time t, or -1 where the face is not seen then
function pointAt(face, t, span) {
  let lo = 0, hi = face.t.length - 1;
  if (hi < 0 || t < face.t[0] - span || t > face.t[hi] + span) return -1;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (face.t[mid] <= t) lo = mid; else hi = mid - 1; }
  if (lo + 1 < face.t.length && Math.abs(face.t[lo + 1] - t) < Math.abs(face.t[lo] - t)) lo += 1;
  return Math.abs(face.t[lo] - t) <= span ? lo : -1;
}

function readout(face, t, span, classes) {
  const i = pointAt(face, t, span);
  if (i < 0) return "not seen here";
  let best = 0;
  face.p.forEach(function (ys, c) { if (ys[i] > face.p[best][i]) best = c; });
  return classes[best] + " " + face.p[best][i].toFixed(2) + " · valence " + face.v[i].toFixed(2) +
    " · arousal " + face.a[i].toFixed(2);
}

// -- the timeline: lanes, playhead, readouts, click and drag to seek ---------------------------------------
function makeTimeline(data, p) {
  const tl = data.timeline, faces = tl.faces.map(function (f) { return decodeFace(f, tl.scale); });
  const box = document.getElementById("timeline"), head = document.getElementById("playhead");
  const lanes = Array.from(document.querySelectorAll("canvas.lane"));
  const labels = Array.from(document.querySelectorAll(".track .readout"));
  const span = tl.bucket_s + 1 / data.fps, maxStep = 1.5 * tl.bucket_s + 1.5 / data.fps;
  if (!box || !lanes.length) return { draw: function () {}, show: function () {} };
  const timeAt = function (clientX) {
    const r = lanes[0].getBoundingClientRect();
    return (clientX - r.left) / r.width * data.duration;
  };
  let dragging = false;
  box.addEventListener("pointerdown", function (e) {
    dragging = true;
    box.setPointerCapture(e.pointerId);
    p.seek(timeAt(e.clientX));
  });
  box.addEventListener("pointermove", function (e) { if (dragging) p.seek(timeAt(e.clientX)); });
  ["pointerup", "pointercancel"].forEach(function (name) {
    box.addEventListener(name, function () { dragging = false; });
  });
  return {
    draw: function () {
      lanes.forEach(function (canvas) { drawLane(canvas, faces[+canvas.dataset.face], data, maxStep); });
      const axis = document.getElementById("axis");
      if (axis) drawAxis(axis, data.duration);
    },
    show: function (t) {
      head.style.left = (lanes[0].offsetLeft + t / data.duration * lanes[0].clientWidth) + "px";
      labels.forEach(function (label, k) { label.textContent = readout(faces[k], t, span, data.classes); });
    },
  };
}

function main() {
  const node = document.getElementById("report-data");
  if (!node) return;
  const data = JSON.parse(node.textContent);
  data.duration = Math.max(data.duration, 1 / data.fps);
  let updateControls = function () {}, timeline = { draw: function () {}, show: function () {} };
  const p = makePlayer(data.fps, data.duration, function () {
    updateControls();
    timeline.show(p.now());
  });
  updateControls = bindControls(p);
  timeline = makeTimeline(data, p);
  window.addEventListener("resize", function () { timeline.draw(); timeline.show(p.now()); });
  timeline.draw();
  updateControls();
  timeline.show(p.now());
}

main();
