// rest-serve's capture processor (AudioWorklet, audio thread): the microphone, mixed to mono and resampled
// to the server's rate (16 kHz), handed to the page in pieces of `pieceSamples`.
//
// Resampling: band-limited interpolation. Each output sample is the input evaluated at a fractional
// position through a Blackman-windowed sinc low-pass at 0.45 x the output rate (below its Nyquist, so
// 48 kHz speech does not alias into the 16 kHz stream); the weights are normalised so DC passes unchanged.
// An input at or below the output rate is interpolated linearly.

const CUTOFF_OF_OUTPUT_RATE = 0.45; // design choice: 7.2 kHz at 16 kHz, 10 % guard band below Nyquist
const ZERO_CROSSINGS = 8; // design choice: sinc lobes each side (a 1 ms window at 48 kHz)

class RestCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, pieceSamples } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    this.cutoff = (CUTOFF_OF_OUTPUT_RATE * targetRate) / sampleRate; // cycles per input sample
    this.half = this.step > 1 ? Math.ceil(ZERO_CROSSINGS * this.step) : 1; // taps each side
    this.input = new Float32Array(4096); // input samples from absolute index `inputStart`
    this.inputStart = 0;
    this.inputLength = 0;
    this.position = 0; // next output sample, as an absolute input position
    this.pieceSamples = pieceSamples;
    this.piece = new Float32Array(pieceSamples);
    this.filled = 0;
    this.emitted = 0; // output samples handed to the page
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post(true);
        this.stopped = true;
      }
    };
  }

  append(mono) {
    if (this.inputLength + mono.length > this.input.length) {
      const grown = new Float32Array(Math.max(this.input.length * 2, this.inputLength + mono.length));
      grown.set(this.input.subarray(0, this.inputLength));
      this.input = grown;
    }
    this.input.set(mono, this.inputLength);
    this.inputLength += mono.length;
  }

  sampleAt(position) {
    const center = Math.floor(position);
    const frac = position - center;
    const base = center - this.inputStart;
    if (this.step <= 1) {
      return this.input[base] * (1 - frac) + this.input[base + 1] * frac;
    }
    let sum = 0;
    let weights = 0;
    for (let k = 1 - this.half; k <= this.half; k++) {
      const t = k - frac; // distance from the output position, in input samples
      const x = 2 * this.cutoff * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = (t + this.half) / (2 * this.half); // 0..1 across the window
      const blackman = 0.42 - 0.5 * Math.cos(2 * Math.PI * w) + 0.08 * Math.cos(4 * Math.PI * w);
      const weight = sinc * blackman;
      sum += this.input[base + k] * weight;
      weights += weight;
    }
    return sum / weights;
  }

  post(final) {
    if (this.filled > 0 || final) {
      const samples = this.piece.slice(0, this.filled);
      this.emitted += this.filled;
      this.port.postMessage({ samples, end: this.emitted, final }, [samples.buffer]);
      this.filled = 0;
    }
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const mono = new Float32Array(channels[0].length);
    for (const channel of channels) {
      for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
    }
    this.append(mono);
    // An output sample needs `half` input samples past its position.
    while (Math.floor(this.position) + this.half < this.inputStart + this.inputLength) {
      if (Math.floor(this.position) - this.half + 1 < this.inputStart) {
        this.position += this.step; // the stream's first outputs: no left context yet, read as silence
        this.piece[this.filled++] = 0;
      } else {
        this.piece[this.filled++] = this.sampleAt(this.position);
        this.position += this.step;
      }
      if (this.filled === this.pieceSamples) this.post(false);
    }
    // Drop input no later output sample reads.
    const keepFrom = Math.floor(this.position) - this.half + 1 - this.inputStart;
    if (keepFrom > 0) {
      this.input.copyWithin(0, keepFrom, this.inputLength);
      this.inputLength -= keepFrom;
      this.inputStart += keepFrom;
    }
    return true;
  }
}

registerProcessor("rest-capture", RestCapture);
