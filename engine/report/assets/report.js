// emoengine report.html: synced videos, timeline lanes with a playhead, seeking, keyboard. No framework, no fetches.
(function () {
  "use strict";
  const dataNode = document.getElementById("report-data");
  if (!dataNode) return;
  const data = JSON.parse(dataNode.textContent);
  const fps = data.fps;
  const duration = Math.max(data.duration, 1 / fps);
  const videos = Array.from(document.querySelectorAll("video.synced"));
  const master = videos[0] || null;
  const state = { t: 0, dragging: false };

  // -- time: the master video's clock, or our own where the run wrote no video ------------------------------
  function now() { return master ? master.currentTime : state.t; }
  function clamp(t) { return Math.min(Math.max(t, 0), Math.max(duration - 1 / fps, 0)); }
  function playing() { return master !== null && !master.paused && !master.ended; }

  function seek(t) {
    t = clamp(t);
    state.t = t;
    videos.forEach(function (v) { v.currentTime = t; });
    update();
  }
  function play() {
    if (!master) return;
    if (master.ended || now() >= duration - 1 / fps) seek(0);
    const t = now();
    videos.forEach(function (v) {
      if (Math.abs(v.currentTime - t) > 0.5 / fps) v.currentTime = t;
      const p = v.play();
      if (p && p.catch) p.catch(function () { /* e.g. a codec this browser lacks: the others still play */ });
    });
    requestAnimationFrame(tick);
  }
  function pause() {
    videos.forEach(function (v) { v.pause(); });
    seek(now());   // followers land on the master's frame
  }
  function toggle() { if (playing()) pause(); else play(); }
  function step(frames) {
    if (playing()) pause();
    seek((Math.round(now() * fps) + frames) / fps);
  }

  // while playing: followers that drift more than two frames from the master are put back on it
  function tick() {
    const t = now();
    videos.forEach(function (v) {
      if (v === master || v.seeking) return;
      if (Math.abs(v.currentTime - t) > 2 / fps) v.currentTime = t;
      if (v.paused && playing() && !v.ended) v.play().catch(function () {});
    });
    update();
    if (playing()) requestAnimationFrame(tick);
  }

  // -- the controls ---------------------------------------------------------------------------------------
  const playButton = document.getElementById("play");
  const seekBar = document.getElementById("seek");
  const clockText = document.getElementById("clock");
  function fmt(t) {
    const m = Math.floor(t / 60), s = t - 60 * m;
    return m + ":" + (s < 10 ? "0" : "") + s.toFixed(2);
  }
  function update() {
    const t = now();
    if (seekBar) seekBar.value = t;
    if (clockText) {
      clockText.textContent = fmt(t) + " / " + fmt(duration) + " · frame " + Math.round(t * fps);
    }
    if (playButton) playButton.textContent = playing() ? "❚❚ pause" : "▶ play";
    placePlayhead(t);
    readouts(t);
  }
  if (playButton) playButton.addEventListener("click", toggle);
  if (seekBar) seekBar.addEventListener("input", function () { seek(parseFloat(seekBar.value)); });
  const back = document.getElementById("frame-back"), fwd = document.getElementById("frame-fwd");
  if (back) back.addEventListener("click", function () { step(-1); });
  if (fwd) fwd.addEventListener("click", function () { step(1); });
  if (master) {
    ["seeked", "pause", "play", "loadeddata"].forEach(function (e) { master.addEventListener(e, update); });
    master.addEventListener("ended", function () { videos.forEach(function (v) { v.pause(); }); update(); });
  }
  document.querySelectorAll(".enlarge").forEach(function (b) {
    b.addEventListener("click", function () { b.closest(".tile").classList.toggle("enlarged"); drawAll(); });
  });
  videos.forEach(function (v) {
    v.addEventListener("dblclick", function () { v.closest(".tile").classList.toggle("enlarged"); });
    v.addEventListener("click", toggle);
  });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === " " || e.code === "Space") { e.preventDefault(); toggle(); }
    else if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
  });

  // -- the timeline ---------------------------------------------------------------------------------------
  const tl = data.timeline, scale = tl.scale;
  const faces = tl.faces.map(decode);
  const timeline = document.getElementById("timeline");
  const playhead = document.getElementById("playhead");
  const lanes = Array.from(document.querySelectorAll("canvas.lane"));
  const labels = Array.from(document.querySelectorAll(".track .readout"));

  function values(ints) { return ints ? ints.map(function (x) { return x / scale; }) : null; }
  function decode(f) {
    let acc = 0;
    const t = f.t.map(function (d) { acc += d; return acc / 1000; });
    return { id: f.id, t: t, p: f.p.map(values), v: values(f.v), a: values(f.a),
             vmin: values(f.vmin), vmax: values(f.vmax), amin: values(f.amin), amax: values(f.amax) };
  }
  function gap(face, i) { return i > 0 && face.t[i] - face.t[i - 1] > 1.5 * tl.bucket_s + 1.5 / fps; }

  function line(ctx, face, ys, x, y) {
    ctx.beginPath();
    for (let i = 0; i < face.t.length; i++) {
      if (i === 0 || gap(face, i)) ctx.moveTo(x(face.t[i]), y(ys[i]));
      else ctx.lineTo(x(face.t[i]), y(ys[i]));
    }
    ctx.stroke();
  }
  function band(ctx, face, lo, hi, x, y) {
    let start = 0;
    for (let i = 1; i <= face.t.length; i++) {
      if (i < face.t.length && !gap(face, i)) continue;
      ctx.beginPath();
      for (let k = start; k < i; k++) ctx.lineTo(x(face.t[k]), y(hi[k]));
      for (let k = i - 1; k >= start; k--) ctx.lineTo(x(face.t[k]), y(lo[k]));
      ctx.closePath();
      ctx.fill();
      start = i;
    }
  }
  function setup(canvas) {
    const r = window.devicePixelRatio || 1, w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = Math.round(w * r);
    canvas.height = Math.round(h * r);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(r, 0, 0, r, 0, 0);
    return { ctx: ctx, w: w, h: h };
  }
  function drawLane(canvas, face) {
    const c = setup(canvas), ctx = c.ctx;
    const x = function (t) { return t / duration * c.w; };
    const pTop = 4, pH = c.h * 0.5, vTop = pTop + pH + 8, vH = c.h - vTop - 4;
    const py = function (p) { return pTop + (1 - p) * pH; };
    const R = data.va_range;
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
    face.p.forEach(function (ys, k) { ctx.strokeStyle = data.palette[k % data.palette.length]; line(ctx, face, ys, x, py); });
    [["v", data.va_colours.valence], ["a", data.va_colours.arousal]].forEach(function (s) {
      const key = s[0], colour = s[1];
      if (face[key + "min"]) {
        ctx.globalAlpha = 0.18; ctx.fillStyle = colour;
        band(ctx, face, face[key + "min"], face[key + "max"], x, vy);
        ctx.globalAlpha = 1;
      }
      ctx.strokeStyle = colour; line(ctx, face, face[key], x, vy);
    });
  }
  function drawAxis() {
    const canvas = document.getElementById("axis");
    if (!canvas) return;
    const c = setup(canvas), ctx = c.ctx;
    const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    const every = steps.find(function (s) { return duration / s <= c.w / 90; }) || 7200;
    ctx.fillStyle = "#6b6b70"; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "top";
    for (let t = 0; t <= duration; t += every) {
      const px = t / duration * c.w;
      ctx.fillRect(px, 0, 1, 5);
      ctx.fillText(fmt(t).replace(/\.00$/, ""), Math.min(px + 2, c.w - 40), 6);
    }
  }
  function drawAll() {
    lanes.forEach(function (canvas) { drawLane(canvas, faces[+canvas.dataset.face]); });
    drawAxis();
    update();
  }

  function placePlayhead(t) {
    if (!playhead || !lanes.length) return;
    playhead.style.left = (lanes[0].offsetLeft + t / duration * lanes[0].clientWidth) + "px";
  }
  function at(face, t) {   // the point shown at time t, or -1 where the face is not seen
    let lo = 0, hi = face.t.length - 1;
    if (hi < 0 || t < face.t[0] - tl.bucket_s || t > face.t[hi] + tl.bucket_s) return -1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (face.t[mid] <= t) lo = mid; else hi = mid - 1; }
    if (lo + 1 < face.t.length && Math.abs(face.t[lo + 1] - t) < Math.abs(face.t[lo] - t)) lo += 1;
    return Math.abs(face.t[lo] - t) <= tl.bucket_s + 1 / fps ? lo : -1;
  }
  function readouts(t) {
    labels.forEach(function (label, k) {
      const face = faces[k], i = at(face, t);
      if (i < 0) { label.textContent = "not seen here"; return; }
      let best = 0;
      face.p.forEach(function (ys, c) { if (ys[i] > face.p[best][i]) best = c; });
      label.textContent = data.classes[best] + " " + face.p[best][i].toFixed(2) + " · valence " +
        face.v[i].toFixed(2) + " · arousal " + face.a[i].toFixed(2);
    });
  }

  function timeAt(clientX) {
    const r = lanes[0].getBoundingClientRect();
    return (clientX - r.left) / r.width * duration;
  }
  if (timeline && lanes.length) {
    timeline.addEventListener("pointerdown", function (e) {
      state.dragging = true;
      timeline.setPointerCapture(e.pointerId);
      seek(timeAt(e.clientX));
    });
    timeline.addEventListener("pointermove", function (e) { if (state.dragging) seek(timeAt(e.clientX)); });
    ["pointerup", "pointercancel"].forEach(function (name) {
      timeline.addEventListener(name, function () { state.dragging = false; update(); });
    });
  }
  window.addEventListener("resize", drawAll);
  drawAll();
})();
