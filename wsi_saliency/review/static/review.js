/* wsi-saliency review page: one slide in an OpenSeadragon viewer, with its heatmaps as
 * overlays, the tissue outline and the regions drawn over it, and a gallery of the most
 * suspicious patches.
 *
 * Frames: the page data (the JSON in #review-data, written by wsi_saliency.review.pages) give
 * every position in level-0 (x, y) pixels. The slide is the first tiled image, at x = 0 with
 * width 1, so viewport units are level-0 pixels divided by the slide's level-0 width W; the
 * heatmaps are further tiled images at x = 0, y = 0 with width = their level-0 extent / W.
 *
 * Drawer: 'canvas'. OpenSeadragon 5+ prefers its WebGL drawer, which must upload every image
 * as a texture, and WebGL refuses images from file:// (they count as cross-origin), so the
 * page would be blank when opened from disk. The canvas (2D) drawer draws them from file://
 * and from http:// alike.
 *
 * Tiles: opened from disk, the viewer reads the Deep Zoom tiles that `wsi-saliency review`
 * wrote (review/slide_files/); served by `wsi-saliency serve`, the same URLs are answered by
 * the server, from disk or made on demand. Opened from disk without written tiles, the
 * viewer shows the overview image instead. The DZI descriptor is given inline, because
 * Chromium refuses to fetch a .dzi file from file://.
 */
(function () {
  "use strict";
  const OSD = window.OpenSeadragon;
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const W = data.slide.width;
  const served = location.protocol === "http:" || location.protocol === "https:";
  const byId = (id) => document.getElementById(id);
  const state = {
    overlay: data.overlays.length ? data.overlays[0].id : "none",
    opacity: 0.5,
    items: {},
    tissue: true,
    regions: true,
    highlight: null,
    expected: 0,
  };
  const notes = [];

  function notice(text) {
    if (notes.includes(text)) return;
    notes.push(text);
    const box = byId("notice");
    box.textContent = notes.join(" ");
    box.hidden = false;
  }
  for (const note of data.notes || []) notice(note);

  /* ---- the viewer -------------------------------------------------------------------- */

  function baseImage() {
    const b = data.base;
    if (b.dzi && (b.tiles_written || served)) {
      return { tileSource: b.dzi, x: 0, y: 0, width: 1 };
    }
    if (b.overview) {
      notice(
        "Overview only: this slide's tiles were not written. " +
          "Run `wsi-saliency serve OUT` and open the page it prints to zoom to full resolution."
      );
      return { tileSource: { type: "image", url: b.overview }, x: 0, y: 0, width: 1 };
    }
    return null;
  }

  const base = baseImage();
  const viewer = OSD({
    element: byId("viewer"),
    prefixUrl: data.static + "openseadragon/images/",
    drawer: "canvas",
    tileSources: base ? [base] : [],
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.3,
    crossOriginPolicy: false,
    showRotationControl: false,
    gestureSettingsMouse: { clickToZoom: false },
  });

  viewer.addHandler("open-failed", (e) => notice("Cannot open the slide: " + (e.message || "")));
  viewer.addHandler("add-item-failed", (e) =>
    notice("Cannot load an overlay: " + (e.message || ""))
  );
  let tileFailures = 0;
  viewer.addHandler("tile-load-failed", () => {
    tileFailures += 1;
    if (tileFailures === 3) notice("Some slide tiles cannot be loaded.");
  });

  function addOverlays() {
    state.expected = (base ? 1 : 0) + data.overlays.length;
    for (const o of data.overlays) {
      viewer.addTiledImage({
        tileSource: { type: "image", url: o.url },
        x: 0,
        y: 0,
        width: o.l0_width / W,
        opacity: 0,
        preload: true, // load while hidden, so that switching overlays is instant
        success: (e) => {
          state.items[o.id] = e.item;
          applyOverlay();
        },
      });
    }
  }
  if (base) viewer.addOnceHandler("open", addOverlays);
  else addOverlays();

  /* ---- overlay controls -------------------------------------------------------------- */

  function applyOverlay() {
    for (const [id, item] of Object.entries(state.items)) {
      item.setOpacity(id === state.overlay ? state.opacity : 0);
    }
    const o = data.overlays.find((x) => x.id === state.overlay);
    byId("legend").hidden = !o;
    if (!o) return;
    byId("legend-bar").src = o.legend.url;
    byId("legend-label").textContent = o.legend.label;
    const ticks = byId("legend-ticks");
    ticks.replaceChildren();
    const lo = o.legend.ticks[0].value;
    const hi = o.legend.ticks[o.legend.ticks.length - 1].value;
    o.legend.ticks.forEach((t, i, all) => {
      const span = document.createElement("span");
      span.textContent = t.text;
      span.style.left = (100 * (t.value - lo)) / (hi - lo || 1) + "%";
      if (i === 0) span.className = "first";
      else if (i === all.length - 1) span.className = "last";
      ticks.appendChild(span);
    });
  }

  const choice = byId("overlay-choice");
  for (const o of [...data.overlays, { id: "none", label: "None" }]) {
    const label = document.createElement("label");
    label.className = "row";
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "overlay";
    input.value = o.id;
    input.id = "overlay-" + o.id;
    input.checked = o.id === state.overlay;
    input.addEventListener("change", () => {
      state.overlay = o.id;
      applyOverlay();
    });
    label.append(input, " " + o.label);
    choice.appendChild(label);
  }
  byId("opacity").addEventListener("input", (e) => {
    state.opacity = parseFloat(e.target.value);
    byId("opacity-value").textContent = state.opacity.toFixed(2);
    applyOverlay();
  });
  byId("show-tissue").addEventListener("change", (e) => {
    state.tissue = e.target.checked;
    drawVectors();
  });
  byId("show-regions").addEventListener("change", (e) => {
    state.regions = e.target.checked;
    drawVectors();
  });
  byId("region-count").textContent = "(" + data.regions.length + ")";
  applyOverlay();

  /* ---- outlines: a 2D canvas above the drawer's, redrawn on every viewport change ------ */

  const vectors = document.createElement("canvas");
  vectors.className = "vector-layer";
  viewer.canvas.appendChild(vectors);

  function ringPath(ctx, ring, tx, ty) {
    ctx.moveTo(tx(ring[0][0]), ty(ring[0][1]));
    for (let i = 1; i < ring.length; i++) ctx.lineTo(tx(ring[i][0]), ty(ring[i][1]));
    ctx.closePath();
  }

  function drawVectors() {
    const dpr = window.devicePixelRatio || 1;
    const w = viewer.canvas.clientWidth;
    const h = viewer.canvas.clientHeight;
    if (vectors.width !== Math.round(w * dpr) || vectors.height !== Math.round(h * dpr)) {
      vectors.width = Math.round(w * dpr);
      vectors.height = Math.round(h * dpr);
    }
    const ctx = vectors.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    // level-0 (x, y) -> viewer pixels: viewport point (x / W, y / W), current (animated) zoom
    const p0 = viewer.viewport.pixelFromPoint(new OSD.Point(0, 0), true);
    const p1 = viewer.viewport.pixelFromPoint(new OSD.Point(1, 0), true);
    const s = (p1.x - p0.x) / W;
    const tx = (x) => p0.x + x * s;
    const ty = (y) => p0.y + y * s;
    if (state.tissue && data.tissue.length) {
      ctx.beginPath();
      for (const ring of data.tissue) ringPath(ctx, ring, tx, ty);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "rgba(0, 190, 0, 0.9)";
      ctx.stroke();
    }
    if (state.regions) {
      ctx.font = "12px sans-serif";
      for (const r of data.regions) {
        ctx.beginPath();
        for (const ring of r.rings) ringPath(ctx, ring, tx, ty);
        ctx.lineWidth = 2;
        ctx.strokeStyle = r.color;
        ctx.stroke();
        const left = tx(r.label_xy[0]);
        const top = ty(r.label_xy[1]);
        if ((r.bbox[2] - r.bbox[0]) * s > 40 && r.prob_max !== null) {
          const text = r.name + " " + r.prob_max.toFixed(2);
          ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
          ctx.fillRect(left, top - 16, ctx.measureText(text).width + 6, 15);
          ctx.fillStyle = "#fff";
          ctx.fillText(text, left + 3, top - 4);
        }
      }
    }
    if (state.highlight) {
      const b = state.highlight;
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(tx(b.x), ty(b.y), b.w * s, b.h * s);
      ctx.lineDashOffset = 6;
      ctx.strokeStyle = "#000";
      ctx.strokeRect(tx(b.x), ty(b.y), b.w * s, b.h * s);
      ctx.setLineDash([]);
    }
  }
  viewer.addHandler("update-viewport", drawVectors);
  viewer.addHandler("resize", drawVectors);

  /* ---- zooming to patches and regions ------------------------------------------------- */

  function zoomToBox(x, y, w, h, pad) {
    state.highlight = { x: x, y: y, w: w, h: h };
    const rect = new OSD.Rect((x - pad) / W, (y - pad) / W, (w + 2 * pad) / W, (h + 2 * pad) / W);
    viewer.viewport.fitBounds(rect);
    drawVectors();
  }

  function zoomToPatch(g) {
    zoomToBox(g.x, g.y, g.size, g.size, g.size);
  }

  const gallery = byId("gallery");
  if (!data.gallery.length) gallery.textContent = "No scored patches.";
  for (const g of data.gallery) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "patch";
    button.dataset.rank = g.rank;
    button.title =
      "#" + g.rank + " at level-0 (" + Math.round(g.x) + ", " + Math.round(g.y) + "), " +
      Math.round(g.size) + " px: click to zoom";
    const crop = document.createElement("img");
    crop.src = g.crop;
    crop.alt = "patch " + g.rank;
    button.appendChild(crop);
    if (g.cam) {
      const cam = document.createElement("img");
      cam.src = g.cam;
      cam.alt = "Grad-CAM of patch " + g.rank;
      button.appendChild(cam);
    }
    const caption = document.createElement("span");
    caption.textContent = "#" + g.rank + "  p = " + g.prob.toFixed(3);
    button.appendChild(caption);
    button.addEventListener("click", () => zoomToPatch(g));
    gallery.appendChild(button);
  }

  if (data.regions.length) {
    byId("regions-section").hidden = false;
    const list = byId("regions");
    data.regions.forEach((r, i) => {
      const li = document.createElement("li");
      li.className = "region";
      li.dataset.index = i;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = r.color;
      const parts = [r.name];
      if (r.prob_max !== null) parts.push("max " + r.prob_max.toFixed(3));
      if (r.prob_mean !== null) parts.push("mean " + r.prob_mean.toFixed(3));
      if (r.area_um2 !== null) parts.push((r.area_um2 / 1e6).toFixed(4) + " mm²");
      li.append(swatch, " " + parts.join(", "));
      li.addEventListener("click", () => {
        const bw = r.bbox[2] - r.bbox[0];
        const bh = r.bbox[3] - r.bbox[1];
        zoomToBox(r.bbox[0], r.bbox[1], bw, bh, 0.25 * Math.max(bw, bh));
      });
      list.appendChild(li);
    });
  }

  /* ---- for scripts and tests ----------------------------------------------------------- */

  window.review = {
    viewer: viewer,
    data: data,
    state: state,
    zoomToPatch: zoomToPatch,
    /** True once the slide and every overlay are in the viewer and fully drawn. */
    ready: function () {
      const n = viewer.world.getItemCount();
      if (n < state.expected || state.expected === 0) return false;
      for (let i = 0; i < n; i++) {
        if (!viewer.world.getItemAt(i).getFullyLoaded()) return false;
      }
      return true;
    },
  };
})();
