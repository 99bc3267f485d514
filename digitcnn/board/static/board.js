// digitcnn drawing board: Pointer Events drawing, throttled predictions, Undo/Clear, Save as.
//
// State the tests (and curious people) can read on <body>: data-guess (the top class shown),
// data-probabilities (JSON), data-strokes-ended / data-answered-stroke (the count of strokes
// ended, and the stroke the shown answer includes), data-latency-ms (pointerup of the last
// stroke to its bars on the page), data-saved (the last saved file).
"use strict";

(() => {
  const THROTTLE_MS = 100;   // at most one prediction request per 100 ms while drawing
  const PAPER = "#ffffff";
  const INK = "#000000";

  const pad = document.getElementById("pad");
  const context = pad.getContext("2d");
  const seen = document.getElementById("seen");
  const bars = document.getElementById("bars");
  const guess = document.getElementById("guess");
  const confidence = document.getElementById("confidence");
  const message = document.getElementById("message");
  const saveDigit = document.getElementById("save-digit");
  const saveButton = document.getElementById("save");
  const saveStatus = document.getElementById("save-status");
  const undoButton = document.getElementById("undo");
  const clearButton = document.getElementById("clear");

  const state = {
    strokes: [],        // each stroke: an array of [x, y] in canvas pixels
    current: null,      // the stroke being drawn
    pointer: null,      // its pointerId
    version: 0,         // bumped at every change of the drawing
    clearedAt: 0,       // answers to requests older than this version are dropped
    strokesEnded: 0,
    pendingEnd: null,   // {seq, at}: the last pointerup not yet answered
    inFlight: false,
    again: false,       // the drawing changed while a request was in flight
    timer: null,
    lastSent: -Infinity,
    classes: [],
  };

  const lineWidth = () => pad.width / 14;

  function paper() {
    context.fillStyle = PAPER;
    context.fillRect(0, 0, pad.width, pad.height);
  }

  function drawSegment(points, from) {
    context.strokeStyle = INK;
    context.fillStyle = INK;
    context.lineWidth = lineWidth();
    context.lineCap = "round";
    context.lineJoin = "round";
    if (points.length === 1) {
      context.beginPath();
      context.arc(points[0][0], points[0][1], lineWidth() / 2, 0, 2 * Math.PI);
      context.fill();
      return;
    }
    context.beginPath();
    context.moveTo(points[Math.max(0, from - 1)][0], points[Math.max(0, from - 1)][1]);
    for (let i = Math.max(1, from); i < points.length; i += 1) {
      context.lineTo(points[i][0], points[i][1]);
    }
    context.stroke();
  }

  function redraw() {
    paper();
    for (const stroke of state.strokes) drawSegment(stroke, 0);
  }

  function position(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width,
            (event.clientY - box.top) * pad.height / box.height];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (state.current !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    state.pointer = event.pointerId;
    state.current = [position(event)];
    state.strokes.push(state.current);
    drawSegment(state.current, 0);
    // The first live answer comes THROTTLE_MS into a stroke: a quick stroke gets one request,
    // at its end, rather than one that the end would have to wait for.
    state.lastSent = Math.max(state.lastSent, performance.now());
    changed(false);
  });

  pad.addEventListener("pointermove", (event) => {
    if (state.current === null || event.pointerId !== state.pointer) return;
    const from = state.current.length;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const each of (events.length ? events : [event])) state.current.push(position(each));
    drawSegment(state.current, from);
    changed(false);
  });

  function endStroke(event) {
    if (state.current === null || event.pointerId !== state.pointer) return;
    state.current = null;
    state.pointer = null;
    state.strokesEnded += 1;
    document.body.dataset.strokesEnded = String(state.strokesEnded);
    state.pendingEnd = { seq: state.strokesEnded, at: performance.now() };
    changed(true);
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  undoButton.addEventListener("click", () => {
    if (state.current !== null || !state.strokes.length) return;
    state.strokes.pop();
    redraw();
    if (!state.strokes.length) { clearAnswer(); return; }
    changed(true);
  });

  clearButton.addEventListener("click", () => {
    state.strokes = [];
    state.current = null;
    redraw();
    clearAnswer();
  });

  function clearAnswer() {
    state.version += 1;
    state.clearedAt = state.version;
    state.pendingEnd = null;
    if (state.timer !== null) { clearTimeout(state.timer); state.timer = null; }
    showAnswer(null);
    saveStatus.textContent = "";
  }

  // Called at every change: a request goes out at once after a stroke ends, else at most
  // every THROTTLE_MS; never two at a time (the answer to the newest drawing follows).
  function changed(now) {
    state.version += 1;
    updateButtons();
    if (state.inFlight) { state.again = true; return; }
    const wait = now ? 0 : Math.max(0, state.lastSent + THROTTLE_MS - performance.now());
    if (state.timer !== null) {
      if (wait > 0) return;
      clearTimeout(state.timer);
      state.timer = null;
    }
    // No timer when nothing is to wait for: browsers delay timers (to 1 s in hidden pages).
    if (wait > 0) state.timer = setTimeout(send, wait);
    else send();
  }

  // The drawing as PNG bytes. Not canvas.toBlob: Chromium encodes it in an idle period, which
  // a busy page may not get for a second; toDataURL encodes at once (a few ms at 280x280).
  function canvasPng() {
    const base64 = pad.toDataURL("image/png").split(",")[1];
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: "image/png" });
  }

  async function post(url, body) {
    const response = await fetch(url, { method: "POST", headers: { "Content-Type": "image/png" },
                                         body });
    const answer = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    return answer;
  }

  async function send() {
    state.timer = null;
    if (!state.strokes.length) return;
    state.inFlight = true;
    state.lastSent = performance.now();
    const version = state.version;
    const ended = state.strokesEnded;
    try {
      const answer = await post("api/predict", canvasPng());
      if (version > state.clearedAt) {
        showAnswer(answer);
        const end = state.pendingEnd;
        if (end !== null && end.seq <= ended) {
          document.body.dataset.latencyMs = (performance.now() - end.at).toFixed(1);
          document.body.dataset.answeredStroke = String(end.seq);
          state.pendingEnd = null;
        }
      }
      message.textContent = "";
    } catch (error) {
      message.textContent = String(error.message || error);
    } finally {
      state.inFlight = false;
      if (state.again) {
        state.again = false;
        if (state.strokes.length) changed(state.pendingEnd !== null);
      }
    }
  }

  function buildBars(classes) {
    bars.textContent = "";
    for (const name of classes) {
      const item = document.createElement("li");
      item.dataset.class = name;
      item.dataset.probability = "0";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = name;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "fill";
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = "";
      item.append(label, bar, value);
      bars.append(item);
    }
    saveDigit.textContent = "";
    for (const name of classes) saveDigit.append(new Option(name, name));
  }

  function showAnswer(answer) {
    const items = bars.children;
    const probabilities = answer ? answer.probabilities : state.classes.map(() => 0);
    probabilities.forEach((p, i) => {
      const item = items[i];
      item.dataset.probability = String(p);
      item.classList.toggle("top", answer !== null && state.classes[i] === answer.top);
      item.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
      item.querySelector(".value").textContent = answer ? `${(100 * p).toFixed(1)}%` : "";
    });
    guess.textContent = answer ? answer.top : "?";
    confidence.textContent = answer ? `${(100 * answer.confidence).toFixed(1)}% sure`
                                    : "draw a digit";
    document.body.dataset.guess = answer ? answer.top : "";
    document.body.dataset.probabilities = answer ? JSON.stringify(answer.probabilities) : "";
    if (answer) saveDigit.value = answer.top;
    showSeen(answer);
  }

  function showSeen(answer) {
    const seenContext = seen.getContext("2d");
    if (!answer) {
      seenContext.clearRect(0, 0, seen.width, seen.height);
      return;
    }
    const [height, width] = answer.seen_shape;
    seen.width = width;
    seen.height = height;
    const image = seenContext.createImageData(width, height);
    answer.seen.forEach((value, i) => {
      const level = Math.round(255 * value / answer.seen_max);
      image.data.set([level, level, level, 255], 4 * i);
    });
    seenContext.putImageData(image, 0, 0);
  }

  function updateButtons() {
    const empty = state.strokes.length === 0;
    undoButton.disabled = empty;
    saveButton.disabled = empty;
  }

  saveButton.addEventListener("click", async () => {
    if (!state.strokes.length) return;
    saveButton.disabled = true;
    try {
      const answer = await post(`api/save?digit=${encodeURIComponent(saveDigit.value)}`,
                                canvasPng());
      saveStatus.textContent = `saved as ${saveDigit.value}: ${answer.save_dir}/${answer.saved}`;
      document.body.dataset.saved = answer.saved;
    } catch (error) {
      saveStatus.textContent = `not saved: ${error.message || error}`;
    } finally {
      updateButtons();
    }
  });

  async function start() {
    paper();
    updateButtons();
    try {
      const response = await fetch("api/info");
      const info = await response.json();
      state.classes = info.classes;
      buildBars(info.classes);
      const [, height, width] = info.input_shape;
      document.getElementById("seen-size").textContent = `${height}x${width}`;
      const ensemble = info.models > 1 ? `, ensemble of ${info.models} fold models` : "";
      document.getElementById("model-info").textContent =
        `${info.model}${ensemble} from ${info.source}; input ${height}x${width}; ` +
        `saved drawings go to ${info.save_dir}/<digit>/`;
      showAnswer(null);
      document.body.dataset.ready = "1";
    } catch (error) {
      message.textContent = `cannot reach the board server: ${error.message || error}`;
    }
  }

  start();
})();
