// rest-serve's page: the microphone goes to the server in 20 ms pieces of 16 kHz f32le PCM; the frames that
// come back are painted at the video's frame rate, in order; the stats show what a person waits for.
//
// Latency of a chunk = from the capture of its last audio sample (the last sample its frames show,
// `audio_end - 1` in its header) to the moment its first frame is painted. "Capture" is when the browser
// hands the audio block holding that sample to the page (the worklet's post, less the samples after it).
// The design's floor for it is look-ahead + compute: a chunk cannot start before the audio encoder's
// look-ahead past its end has arrived, then takes the server's compute. A sound at the start of a chunk
// waits a whole chunk more: sound-to-face delay = latency + chunk length, floor chunk + look-ahead + compute.
// `window.rest` holds the numbers (the browser test reads them).

const SAMPLE_RATE = 16000; // the hello announces it; a server that takes another rate closes with 1003
const PIECE_MS = 20; // design choice: small pieces add at most 20 ms of latency
const PLAYBACK_RING_S = 10; // audio kept for "play my voice with the video"
const CAPTURE_LOG_ENTRIES = 3000; // 60 s of 20 ms pieces
// Frames play at the video's rate from when they arrive; more than a chunk queued (a chunk came late and the
// next on time) plays at this fraction of the frame interval until it is caught up, so one slow chunk does not
// add its delay to every later one. Design choice.
const CATCH_UP = 0.75;

const $ = (id) => document.getElementById(id);
const canvas = $("video");
const painter = canvas.getContext("2d");

const rest = {
  state: "idle", // idle | connecting | streaming | finishing | done | closed
  session: null,
  ready: null, // the server's "ready" message
  closeCode: null,
  closeReason: "",
  samplesSent: 0,
  chunksReceived: 0,
  framesReceived: 0,
  framesPainted: 0,
  latencies: [], // ms per chunk, received before Stop
  arrivalLatencies: [], // the same, to the arrival of the chunk's frames (before they queue to be painted)
  computeMs: [], // the server's compute per chunk
  serverMs: [],
  fps: 0,
  ended: false, // the server's "end" arrived
  done: false, // ended and every frame painted
};
window.rest = rest;

let ws = null;
let audio = null; // { context, stream, source, node }
let pendingHeader = null;
let decoding = Promise.resolve(); // keeps chunks in order while their JPEGs decode
const queue = []; // frames waiting to be painted: { bitmap, arrived, header, first, afterStop }
let nextDue = 0; // when the next frame is due, on the video's clock
let stopClickedAt = null;
const captureLog = []; // [end sample (exclusive), performance.now() of the piece]
const ring = new Float32Array(SAMPLE_RATE * PLAYBACK_RING_S);
const paintTimes = [];

function percentile(values, q) {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

function ms(x) {
  return Number.isFinite(x) ? `${Math.round(x)} ms` : "–";
}

function setState(state, detail) {
  rest.state = state;
  $("state").textContent = detail ? `${state}: ${detail}` : state;
  $("start").disabled = !["idle", "done", "closed"].includes(state);
  $("stop").disabled = state !== "streaming";
}

function captureTime(sample) {
  for (let i = captureLog.length - 1; i >= 0; i--) {
    const [end, time] = captureLog[i];
    const previousEnd = i > 0 ? captureLog[i - 1][0] : 0;
    if (sample < end && sample >= previousEnd) return time - ((end - 1 - sample) * 1000) / SAMPLE_RATE;
  }
  return NaN; // older than the log
}

function showStats() {
  const r = rest.ready;
  const p50 = percentile(rest.latencies, 0.5);
  const p95 = percentile(rest.latencies, 0.95);
  const compute = percentile(rest.computeMs, 0.5);
  rest.p50 = p50;
  rest.p95 = p95;
  rest.floorMs = r ? r.lookahead_ms + compute : NaN;
  $("fps").textContent = `${rest.fps.toFixed(1)} fps (video ${r ? r.fps : "–"} fps)`;
  $("frames").textContent = `${rest.framesPainted} painted / ${rest.framesReceived} received, ${(rest.samplesSent / SAMPLE_RATE).toFixed(1)} s of audio sent`;
  $("latency").textContent = `last ${ms(rest.latencies.at(-1))}, p50 ${ms(p50)}, p95 ${ms(p95)} (${rest.latencies.length} chunks)`;
  $("floor").textContent = r ? `${ms(rest.floorMs)} = look-ahead ${ms(r.lookahead_ms)} + compute p50 ${ms(compute)}` : "–";
  $("delay").textContent = r
    ? `p50 ${ms(p50 + r.chunk_ms)}, floor ${ms(r.chunk_ms + rest.floorMs)} = chunk ${ms(r.chunk_ms)} + look-ahead + compute`
    : "–";
}

function playVoice(header) {
  if (!$("voice").checked || !audio || audio.context.state === "closed") return;
  const start = Math.max(header.audio_start, rest.samplesSent - ring.length);
  const end = Math.min(header.audio_end, rest.samplesSent);
  if (end <= start) return;
  const buffer = audio.context.createBuffer(1, end - start, SAMPLE_RATE);
  const data = buffer.getChannelData(0);
  for (let i = start; i < end; i++) data[i - start] = ring[i % ring.length];
  const source = audio.context.createBufferSource();
  source.buffer = buffer;
  source.connect(audio.context.destination);
  source.start();
}

function paint(frame, now) {
  painter.drawImage(frame.bitmap, 0, 0, canvas.width, canvas.height);
  frame.bitmap.close();
  rest.framesPainted += 1;
  paintTimes.push(now);
  while (paintTimes.length && paintTimes[0] < now - 1000) paintTimes.shift();
  rest.fps = paintTimes.length > 1 ? ((paintTimes.length - 1) * 1000) / (now - paintTimes[0]) : 0;
  if (frame.first) {
    if (!frame.afterStop) {
      const latency = now - captureTime(frame.header.audio_end - 1);
      if (Number.isFinite(latency)) rest.latencies.push(latency);
    }
    playVoice(frame.header);
  }
}

function tick() {
  const now = performance.now();
  if (queue.length) {
    nextDue = Math.max(nextDue, queue[0].arrived); // after a gap the clock restarts at the arrival
    if (now >= nextDue) {
      paint(queue.shift(), now); // one per display frame: none is skipped
      const frameMs = 1000 / rest.ready.fps;
      const chunkFrames = rest.ready.chunk_ms / frameMs;
      nextDue += queue.length >= chunkFrames ? frameMs * CATCH_UP : frameMs;
    }
  }
  if (rest.ended && queue.length === 0 && !rest.done) {
    rest.done = true;
    setState("done", `${rest.framesPainted} frames`);
  }
  showStats();
  requestAnimationFrame(tick);
}

function onChunk(header, payload) {
  const afterStop = stopClickedAt !== null;
  ws.send(JSON.stringify({ type: "ack", chunk: header.index }));
  rest.chunksReceived += 1;
  rest.framesReceived += header.frames;
  rest.computeMs.push(header.compute_ms);
  rest.serverMs.push(header.server_ms);
  let offset = 0;
  const blobs = header.sizes.map((size) => {
    const blob = new Blob([new Uint8Array(payload, offset, size)], { type: "image/jpeg" });
    offset += size;
    return blob;
  });
  if (!afterStop) {
    const arrival = performance.now() - captureTime(header.audio_end - 1);
    if (Number.isFinite(arrival)) rest.arrivalLatencies.push(arrival);
  }
  decoding = decoding.then(async () => {
    const bitmaps = await Promise.all(blobs.map((blob) => createImageBitmap(blob)));
    const arrived = performance.now();
    bitmaps.forEach((bitmap, i) => queue.push({ bitmap, arrived, header, first: i === 0, afterStop }));
  });
}

function onMessage(event) {
  if (typeof event.data !== "string") {
    if (pendingHeader === null) return;
    const header = pendingHeader;
    pendingHeader = null;
    onChunk(header, event.data);
    return;
  }
  const message = JSON.parse(event.data);
  if (message.type === "ready") {
    rest.ready = message;
    rest.session = message.session;
    [canvas.width, canvas.height] = [message.resolution[1], message.resolution[0]];
    startMicrophone().catch((err) => {
      setState("closed", `microphone: ${err.message}`);
      ws.close();
    });
  } else if (message.type === "chunk") {
    pendingHeader = message;
  } else if (message.type === "end") {
    decoding.then(() => {
      rest.ended = true;
    });
  }
}

async function startMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  const context = new AudioContext();
  await context.audioWorklet.addModule("capture-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const pieceSamples = (SAMPLE_RATE * PIECE_MS) / 1000;
  const node = new AudioWorkletNode(context, "rest-capture", {
    numberOfOutputs: 0,
    processorOptions: { targetRate: SAMPLE_RATE, pieceSamples },
  });
  node.port.onmessage = (event) => {
    const { samples, end, final } = event.data;
    if (samples.length && ws.readyState === WebSocket.OPEN) {
      captureLog.push([end, performance.now()]);
      if (captureLog.length > CAPTURE_LOG_ENTRIES) captureLog.shift();
      for (let i = 0; i < samples.length; i++) ring[(end - samples.length + i) % ring.length] = samples[i];
      ws.send(samples.buffer); // f32le: every browser platform is little-endian
      rest.samplesSent = end;
    }
    if (final && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  };
  source.connect(node);
  await context.resume();
  audio = { context, stream, source, node };
  setState("streaming", `session ${rest.session}`);
}

function stopMicrophone() {
  if (!audio) return;
  audio.source.disconnect();
  audio.stream.getTracks().forEach((track) => track.stop());
}

function start() {
  Object.assign(rest, {
    closeCode: null, closeReason: "", samplesSent: 0, chunksReceived: 0, framesReceived: 0,
    framesPainted: 0, latencies: [], arrivalLatencies: [], computeMs: [], serverMs: [], ended: false, done: false,
  });
  captureLog.length = 0;
  queue.length = 0;
  stopClickedAt = null;
  setState("connecting");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "hello", sample_rate: SAMPLE_RATE, format: "f32le" }));
  ws.onmessage = onMessage;
  ws.onclose = (event) => {
    rest.closeCode = event.code;
    rest.closeReason = event.reason;
    stopMicrophone();
    if (!rest.done) setState(event.code === 1000 && rest.ended ? "finishing" : "closed", `${event.code} ${event.reason}`);
    $("closed").textContent = `${event.code} ${event.reason || "(no reason)"}`;
  };
}

function stop() {
  stopClickedAt = performance.now();
  setState("finishing", "generating the last chunks");
  stopMicrophone();
  if (audio) audio.node.port.postMessage("flush"); // the worklet posts its last piece, marked final
}

$("start").onclick = start;
$("stop").onclick = stop;
setState("idle");
requestAnimationFrame(tick);
