// transferkit app: the four pages' Alpine.js components, over the JSON API under /api.
"use strict";

const params = new URLSearchParams(location.search);
const TK = { project: params.get("project") || localStorage.getItem("transferkit.project") || "" };

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { error: { message: text } }; }
  if (!response.ok) throw new Error((body && body.error && body.error.message) || response.statusText);
  return body;
}
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
const enc = encodeURIComponent;
const projectUrl = (project) => `/api/projects/${enc(project)}`;
const pct = (v) => (v === null || v === undefined ? "n/a" : `${(100 * v).toFixed(1)} %`);

function shell() {
  return {
    projects: [], project: TK.project,
    async init() {
      const found = (await api("/api/projects")).projects;
      this.projects = found;
      if (TK.project && !found.includes(TK.project)) TK.project = this.project = "";
      if (!TK.project && found.length) TK.project = this.project = found[0];
      if (TK.project) localStorage.setItem("transferkit.project", TK.project);
      document.querySelectorAll("header nav a").forEach((a) => {
        a.href = `/${a.dataset.page}` + (this.project ? `?project=${enc(this.project)}` : "");
      });
      window.dispatchEvent(new CustomEvent("tk-project", { detail: TK.project }));
    },
    go(project) { location.href = `${location.pathname}?project=${enc(project)}`; },
  };
}

// Pages wait for the shell to settle the project, then load.
function onProject(component) {
  window.addEventListener("tk-project", (e) => { component.project = e.detail; component.load(); }, { once: true });
}

async function openCamera(video) {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: false });
  video.srcObject = stream;
  await new Promise((resolve) => (video.readyState >= 2 ? resolve() : (video.onloadeddata = resolve)));
  return stream;
}
function closeCamera(stream, video) { if (stream) stream.getTracks().forEach((t) => t.stop()); video.srcObject = null; }
function grabFrame(video) {
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

function dataPage() {
  return {
    project: "", dataDir: "", classes: [], newProject: "", newClass: "", importPath: "", error: "", notice: "",
    doctor: null, doctorBusy: false, dragging: null, camera: null, capturing: null, timer: null, queue: Promise.resolve(),
    init() { onProject(this); },
    get ready() { return this.classes.filter((c) => c.count >= 2).length >= 2; },
    async load() {
      if (!this.project) return;
      const info = await api(projectUrl(this.project));
      this.classes = info.classes; this.dataDir = info.data_dir;
      this.runDoctor();
    },
    async runDoctor() {
      clearTimeout(this._doctorTimer);
      this._doctorTimer = setTimeout(async () => {
        if (!this.classes.length) return;
        this.doctorBusy = true;
        try { this.doctor = await api(`${projectUrl(this.project)}/doctor`); } catch (e) { this.doctor = null; }
        this.doctorBusy = false;
      }, 400);
    },
    async act(work) {
      this.error = ""; this.notice = "";
      try { await work(); } catch (e) { this.error = e.message; }
    },
    createProject() {
      return this.act(async () => {
        await post("/api/projects", { name: this.newProject.trim() });
        localStorage.setItem("transferkit.project", this.newProject.trim());
        location.href = `/data?project=${enc(this.newProject.trim())}`;
      });
    },
    createClass() {
      return this.act(async () => {
        await post(`${projectUrl(this.project)}/classes`, { name: this.newClass.trim() });
        this.newClass = ""; await this.load();
      });
    },
    importFolder() {
      return this.act(async () => {
        const done = await post(`${projectUrl(this.project)}/import`, { path: this.importPath.trim() });
        this.notice = `Copied ${done.images} images from ${done.source}.`; await this.load();
      });
    },
    uploadFiles(name, files) {
      return this.act(async () => {
        const form = new FormData();
        for (const f of files) form.append("files", f, f.name);
        const done = await api(`${projectUrl(this.project)}/classes/${enc(name)}/images`, { method: "POST", body: form });
        if (done.refused.length) this.error = done.refused.map((r) => r.message).join("; ");
        await this.load();
      });
    },
    drop(name, event) { this.dragging = null; return this.uploadFiles(name, event.dataTransfer.files); },
    thumbUrl(name, image) { return `${projectUrl(this.project)}/classes/${enc(name)}/images/${enc(image)}?thumb=1`; },
    shortPath(path) { return path && this.dataDir && path.startsWith(this.dataDir) ? path.slice(this.dataDir.length + 1) : path; },
    async toggleCamera() {
      if (this.camera) { closeCamera(this.camera, this.$refs.video); this.camera = null; return; }
      await this.act(async () => { this.camera = await openCamera(this.$refs.video); });
    },
    startCapture(name) {
      if (!this.camera || this.timer) return;
      this.capturing = name;
      const shoot = async () => {
        const blob = await grabFrame(this.$refs.video);
        const form = new FormData();
        form.append("files", blob, `webcam-${Date.now()}.jpg`);
        this.queue = this.queue.then(() => api(`${projectUrl(this.project)}/classes/${enc(name)}/images`, { method: "POST", body: form }))
          .then(() => { const c = this.classes.find((x) => x.name === name); if (c) c.count += 1; })
          .catch((e) => { this.error = e.message; });
      };
      shoot();
      this.timer = setInterval(shoot, 250);
    },
    async stopCapture() {
      if (!this.timer) return;
      clearInterval(this.timer); this.timer = null; this.capturing = null;
      await this.queue; await this.load();
    },
  };
}

function makeChart(element, title, series, yRange) {
  const opts = {
    title, width: element.clientWidth || 360, height: 220,
    scales: { x: { time: false }, y: yRange ? { range: yRange } : {} },
    axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100] }, {}],
    legend: { live: false },
    series: [{ label: "epoch" }, ...series.map(([label, stroke, dash]) => ({ label, stroke, width: 2, dash, points: { show: true, size: 5 } }))],
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], element);
  // Follow the grid cell's width (it is 0 while the page is still hidden when the chart is made).
  new ResizeObserver(() => { if (element.clientWidth) chart.setSize({ width: element.clientWidth, height: 220 }); }).observe(element);
  return chart;
}

function trainPage() {
  return {
    project: "", options: { backbones: [], augment: [], image_sizes: [] }, runs: [], run: null, error: "",
    settings: { backbone: "mobilenet_v2", augment: "standard", image_size: "", epochs: "", fine_tune_epochs: "", report: true },
    charts: null, source: null,
    init() { onProject(this); },
    get busy() { return !!(this.run && this.run.state === "running"); },
    async load() {
      if (!this.project) return;
      this.options = await api("/api/options");
      await this.$nextTick();
      this.charts = {
        loss: makeChart(this.$refs.loss, "Loss", [["train", "#2563eb"], ["validation", "#dc2626", [6, 4]]]),
        acc: makeChart(this.$refs.acc, "Accuracy", [["train", "#2563eb"], ["validation", "#dc2626", [6, 4]]], [0, 1]),
      };
      await this.refreshRuns();
      const wanted = params.get("run") || (this.runs[0] && this.runs[0].run);
      if (wanted) this.show(wanted);
    },
    fineTuneFrom() {
      const row = ((this.run && this.run.history) || []).find((r) => r.stage === 2);
      return row ? row.epoch_index : 0;
    },
    async refreshRuns() { this.runs = (await api(`${projectUrl(this.project)}/runs`)).runs; },
    draw() {
      const h = (this.run && this.run.history) || [];
      const x = h.map((r) => r.epoch_index);
      const col = (k) => h.map((r) => (r[k] === undefined ? null : r[k]));
      this.charts.loss.setData([x, col("loss"), col("val_loss")]);
      this.charts.acc.setData([x, col("accuracy"), col("val_accuracy")]);
      document.body.dataset.chartPoints = String(h.length);
    },
    update(status) {
      status.history.forEach((r, i) => (r.epoch_index = i + 1));
      this.run = status; this.draw();
    },
    show(name) {
      if (this.source) this.source.close();
      this.source = new EventSource(`${projectUrl(this.project)}/runs/${enc(name)}/events`);
      this.source.addEventListener("status", (e) => this.update(JSON.parse(e.data)));
      this.source.addEventListener("end", () => { this.source.close(); this.source = null; this.refreshRuns(); });
      this.source.onerror = () => { if (this.source) { this.source.close(); this.source = null; } };
    },
    async start() {
      this.error = "";
      const s = this.settings, num = (v) => (v === "" || v === null ? null : Number(v));
      try {
        const status = await post(`${projectUrl(this.project)}/runs`, {
          backbone: s.backbone, augment: s.augment, image_size: num(s.image_size), epochs: num(s.epochs),
          fine_tune_epochs: num(s.fine_tune_epochs), report: !!s.report,
        });
        this.update(status); await this.refreshRuns(); this.show(status.run);
      } catch (e) { this.error = e.message; }
    },
    async cancel() {
      try { this.update(await post(`${projectUrl(this.project)}/runs/${enc(this.run.run)}/cancel`)); } catch (e) { this.error = e.message; }
    },
  };
}

// Test and Export share the finished-run picker.
function runPicker() {
  return {
    project: "", runs: [], runName: "", error: "",
    async loadRuns() {
      this.runs = (await api(`${projectUrl(this.project)}/runs`)).runs.filter((r) => r.results);
      const wanted = params.get("run");
      this.runName = this.runs.some((r) => r.run === wanted) ? wanted : this.runs.length ? this.runs[0].run : "";
    },
    runUrl() { return `${projectUrl(this.project)}/runs/${enc(this.runName)}`; },
    fileUrl(path) { return `${this.runUrl()}/files/${path.split("/").map(enc).join("/")}`; },
  };
}

function testPage() {
  return {
    ...runPicker(), result: null, evaluation: null, live: null, report: false,
    init() { onProject(this); },
    async load() { if (this.project) { await this.loadRuns(); this.selectRun(); } },
    selectRun() {
      const r = this.runs.find((x) => x.run === this.runName);
      this.report = !!(r && r.report); this.result = null; this.evaluation = null;
    },
    async send(blob, name) {
      const form = new FormData();
      form.append("file", blob, name);
      return api(`${this.runUrl()}/predict`, { method: "POST", body: form });
    },
    async predictFile(file) {
      if (!file) return;
      this.error = "";
      try { this.result = await this.send(file, file.name); } catch (e) { this.error = e.message; }
    },
    async toggleLive() {
      if (this.live) { closeCamera(this.live, this.$refs.video); this.live = null; return; }
      try { this.live = await openCamera(this.$refs.video); } catch (e) { this.error = e.message; return; }
      const loop = async () => {
        while (this.live) {
          try { this.result = await this.send(await grabFrame(this.$refs.video), "webcam frame"); } catch (e) { this.error = e.message; }
          await new Promise((r) => setTimeout(r, 150));
        }
      };
      loop();
    },
    async evaluate() {
      this.error = "";
      try { this.evaluation = await post(`${this.runUrl()}/evaluation`); } catch (e) { this.error = e.message; }
    },
  };
}

function exportPage() {
  return {
    ...runPicker(), done: {}, working: null, runDir: "",
    formats: [
      { id: "tflite", title: "TFLite", note: "float32, for phones and small devices" },
      { id: "tflite-int8", title: "TFLite int8", note: "quantised: smallest and fastest" },
      { id: "onnx", title: "ONNX", note: "ONNX Runtime and friends" },
      { id: "savedmodel", title: "SavedModel", note: "TensorFlow Serving (a zipped folder)" },
    ],
    init() { onProject(this); },
    async load() {
      if (!this.project) return;
      if (!this.runs.length) await this.loadRuns();
      if (!this.runName) return;
      const info = await api(`${this.runUrl()}/exports`);
      this.runDir = info.run_dir; this.done = {};
      info.exports.forEach((e) => (this.done[e.format] = e));
    },
    async exportAs(format) {
      this.error = ""; this.working = format;
      try { this.done[format] = await post(`${this.runUrl()}/exports`, { format }); } catch (e) { this.error = e.message; }
      this.working = null;
    },
    size(bytes) { return bytes > 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(0)} kB`; },
    serveCommand() { return `transferkit serve '${this.runDir}' --port 8001`; },
    curlCommand() { return "curl -F files=@image.jpg 'http://127.0.0.1:8001/v1/predict?top_k=3'"; },
    copy(text) { navigator.clipboard && navigator.clipboard.writeText(text); },
  };
}
