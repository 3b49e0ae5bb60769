/* Activation atlas viewer (Carter et al., "Activation Atlas", Distill 2019).
 *
 * Reads the tiles folder written by `atlas tiles`, served by `atlas serve` or exported as a static
 * site by `atlas export` (every path is relative to the page):
 *   atlas.json                      the atlases, and whether a JSON API answers ("api")
 *   <base>manifest.json             geometry, zoom -> grid level mapping, class names
 *   <base>{z}/{x}/{y}.<ext>         tiles (Leaflet, flat CRS with y down)
 *   <base>meta/<size>/<ry>-<rx>.json per-cell metadata, fetched on hover/click
 *   per-cell attribution to a class, for highlighting:
 *     api/class?run=&name=          from `atlas serve`
 *     <base>classes/<index>.json    precomputed by `atlas export` (classes/index.json lists them)
 *   photos placed on the atlas by `atlas explain --atlas`:
 *     api/overlays?run=             from `atlas serve`
 *     <base>overlays/index.json     written by `atlas explain` (always present in an export)
 *   <base>overlays/<name>.json      one photo's positions on the atlas
 *   a comparison atlas (`atlas compare`): its run's "comparison" (which class lies on which
 *   side) is drawn as an axis along the bottom; the neighbourhoods that `atlas attack` chose for
 *   its two classes are marked on it (and the cells not on this map listed):
 *     api/attacks?run=              from `atlas serve`
 *     <base>attacks.json            written by `atlas export`
 * Map units are pixels at the deepest tiled zoom; the layout's unit square starts at margin_px
 * and is content_px wide. The URL hash (run, z, x, y, class, cell, photo, single) restores a view.
 *
 * Two features live in their own files, loaded before this one and called with its API
 * (window.atlasViewer) through window.atlasViewerFeatures: layers.js, the layer row of a
 * multi-layer run (a run's "layers" in atlas.json), and aligned.js, the two sides of an aligned
 * atlas side by side (a run's "aligned"), linked in pan, zoom and hover.
 *
 * Every name from the data (runs, classes, photos, overlays, channel views) is shown as text:
 * the page is built with DOM nodes and textContent, never from HTML strings. A run's base is a
 * URL prefix, percent-encoded by the server or the export; a file path read from the data is
 * percent-encoded segment by segment (urlPath) before it joins a URL.
 */
(function () {
  'use strict';

  const DIM = 0.84; // opacity of the veil over cells that do not match a highlighted class
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat('en-US');

  const state = {
    api: true, classIndex: null, runs: [], run: null, m: null, map: null, tiles: null, highlightLayer: null,
    regions: new Map(), klass: null, selected: null, hover: null, hoverRect: null, selectedRect: null,
    restoring: false, hashTimer: 0, tilesLoaded: 0,
    overlays: [], shown: new Map(), // photo overlays: index entries; name -> Leaflet layer group
    attacks: null, attackLayer: null, // a comparison's attack marks: api/attacks answer; their layer group
  };

  // ---- hooks for the features in their own files (layers.js, aligned.js) ------------------
  // 'layout' (run, view): before the main map is made; 'open' (run, view): the atlas is shown;
  // 'close' (next run): before it goes; 'view' (view): a view (hash) was applied; 'hash'
  // (URLSearchParams): the hash is being written; 'pointer' (side, latlng | null): the pointer
  // moved over a map, or left it.

  const hooks = new Map();

  function on(name, fn) {
    if (!hooks.has(name)) hooks.set(name, []);
    hooks.get(name).push(fn);
  }

  function emit(name, ...args) {
    for (const fn of hooks.get(name) || []) {
      try { fn(...args); } catch (err) { console.error(err); }
    }
  }

  // ---- small helpers ------------------------------------------------------------------------

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') node.textContent = v;
      else if (k === 'cls') node.className = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const child of [].concat(children || [])) if (child) node.append(child);
    return node;
  }

  // a relative file path from the data (an index entry, a sprite, a thumbnail) as a URL path:
  // each segment percent-encoded, so that '#', '?' or '%' in a name stay part of it
  function urlPath(path) {
    return String(path).split('/').map(encodeURIComponent).join('/');
  }

  function version(side = state) { // the query that ties a file to the build of the tiles
    return '?v=' + encodeURIComponent(side.m.build);
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: 'application/json' } });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).error || detail; } catch (e) { /* not JSON */ }
      const err = new Error(detail);
      err.status = response.status;
      throw err;
    }
    return response.json();
  }

  function showMessage(text) {
    const box = $('message');
    box.textContent = text;
    box.hidden = false;
  }

  function num(value, fallback) {
    const n = parseFloat(value);
    return Number.isFinite(n) ? n : fallback;
  }

  function formatValue(v) {
    const a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  // ---- geometry -----------------------------------------------------------------------------
  // A "side" is one atlas on one map: { run, m (its manifest), map, regions (its metadata
  // cache) }. The main map's side is `state` itself; the aligned view (aligned.js) adds a second.

  function tileZoom(side = state) {
    const z = Math.round(side.map.getZoom());
    return Math.max(0, Math.min(side.m.max_native_zoom, z));
  }

  function currentLevel(side = state) {
    const size = side.m.zooms[tileZoom(side)].level;
    return side.m.levels.find((lv) => lv.size === size);
  }

  function toLatLng(u, v, side = state) { // layout (x=u, y=v) in [0,1] -> map
    const m = side.m;
    return L.latLng(m.margin_px + v * m.content_px, m.margin_px + u * m.content_px);
  }

  function toLayout(latlng, side = state) {
    const m = side.m;
    return { u: (latlng.lng - m.margin_px) / m.content_px, v: (latlng.lat - m.margin_px) / m.content_px };
  }

  // the zoom of atlas `to` that shows its layout as large on screen as atlas `from` shows its own
  // at zoom `z` (their grids, and so world and content sizes, may differ); clamped to `to`'s zooms
  function relativeZoom(z, from, to) {
    const same = z - from.max_native_zoom + to.max_native_zoom + Math.log2(from.content_px / to.content_px);
    return Math.max(to.min_zoom, Math.min(to.max_zoom, same));
  }

  function cellAt(latlng, level, side = state) {
    const { u, v } = toLayout(latlng, side);
    if (u < 0 || v < 0 || u >= 1 || v >= 1) return null;
    const ix = Math.floor(u * level.size);
    const iy = Math.floor(v * level.size);
    return { iy, ix, id: iy * level.size + ix };
  }

  function cellBounds(level, iy, ix, side = state) {
    const m = side.m;
    const c = m.content_px / level.size;
    const pad = c * m.gap / 2;
    return L.latLngBounds(
      [m.margin_px + iy * c + pad, m.margin_px + ix * c + pad],
      [m.margin_px + (iy + 1) * c - pad, m.margin_px + (ix + 1) * c - pad],
    );
  }

  // ---- metadata -----------------------------------------------------------------------------

  function region(level, ry, rx, side = state) {
    const key = `${level.size}/${ry}-${rx}`;
    const regions = side.regions;
    if (!regions.has(key)) {
      const known = level.regions.some((r) => r[0] === ry && r[1] === rx);
      const url = side.run.base + urlPath(level.meta_url.replace('{ry}', ry).replace('{rx}', rx)) + version(side);
      const promise = known
        ? getJSON(url).then((doc) => ({ names: doc.names, cells: new Map(doc.cells.map((c) => [c.id, c])) }))
        : Promise.resolve({ names: {}, cells: new Map() });
      regions.set(key, promise.catch((err) => { regions.delete(key); throw err; }));
    }
    return regions.get(key);
  }

  async function lookupCell(level, iy, ix, side = state) {
    const r = level.region || 40;
    const doc = await region(level, Math.floor(iy / r), Math.floor(ix / r), side);
    const cell = doc.cells.get(iy * level.size + ix);
    return cell ? { cell, names: doc.names, level, side } : null;
  }

  function className(names, c, side = state) {
    return names[String(c)] || side.m.classes[c] || `class ${c}`;
  }

  // ---- tooltip ------------------------------------------------------------------------------

  function classList(info, limit, onPick) {
    const top = info.cell.top.filter((p) => p[1] > 0).slice(0, limit);
    const max = Math.max(...top.map((p) => p[1]), 1e-9);
    const activeName = state.klass ? state.klass.name : null;
    return el('ol', { cls: 'classes' }, top.map(([c, v]) => {
      const bar = el('span', { cls: 'bar' });
      bar.style.width = `${Math.max(4, (100 * v) / max)}%`;
      const name = className(info.names, c, info.side);
      return el('li', {
        cls: name === activeName ? 'active' : null,
        title: onPick ? `Highlight cells by attribution to “${name}”` : null,
        onclick: onPick ? () => onPick(name) : null,
      }, [bar, el('span', { cls: 'name', text: name }), el('span', { cls: 'val', text: formatValue(v) })]);
    }));
  }

  function fallbackText(cell) { // a cell not rendered shows its nearest rendered ancestor's icon
    const fb = cell.fallback;
    return fb ? `icon not rendered: the grid ${fb.size}×${fb.size} icon of this area (cell ${fb.iy}, ${fb.ix}), scaled` : '';
  }

  function iconNode(info, cls) {
    // the icon is a k x k-cell sprite sheet's box, shown scaled with CSS (one download serves
    // every neighbour in the sheet)
    let icon = info.cell.icon;
    let label = 'feature visualization of the cell';
    if (!icon && info.cell.fallback && info.cell.fallback.icon) {
      icon = info.cell.fallback.icon;
      label = fallbackText(info.cell);
      cls += ' fallback';
    }
    if (!icon) return el('div', { cls: cls + ' pending', text: 'icon not rendered yet' });
    const node = el('div', { cls: cls + ' sprite', role: 'img', 'aria-label': label, title: label });
    node.dataset.sprite = icon.sprite;
    requestAnimationFrame(() => {
      const shown = node.clientWidth || icon.size;
      const k = shown / icon.size;
      node.style.backgroundImage = `url("${info.side.run.base}${urlPath(icon.sprite)}${version(info.side)}")`;
      node.style.backgroundSize = `${icon.sprite_px * k}px ${icon.sprite_px * k}px`;
      node.style.backgroundPosition = `${-icon.x * k}px ${-icon.y * k}px`;
    });
    return node;
  }

  function renderTooltip(info, point) {
    const tip = $('tooltip');
    const { cell, level } = info;
    const top = cell.top.find((p) => p[1] > 0);
    tip.replaceChildren(
      el('div', { cls: 'tt-head' }, [
        iconNode(info, 'tt-icon'),
        el('div', {}, [
          el('div', { cls: 'tt-title', text: top ? className(info.names, top[0], info.side) : 'no positive class' }),
          el('div', { cls: 'tt-sub', text: `${fmt.format(cell.count)} activations` }),
          el('div', { cls: 'tt-sub', text: `grid ${level.size}×${level.size} · cell ${cell.iy}, ${cell.ix}` }),
          cell.fallback ? el('div', { cls: 'tt-sub tt-fallback', text: fallbackText(cell) }) : null,
        ]),
      ]),
      classList(info, 5, null),
    );
    tip.dataset.cell = `${level.size}:${cell.id}`;
    tip.dataset.side = info.side === state ? 'main' : 'peer';
    tip.hidden = false;
    placeTooltip(point);
  }

  function placeTooltip(point) {
    const tip = $('tooltip');
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let x = point.x + 18, y = point.y + 18;
    if (x + w > window.innerWidth - 8) x = point.x - w - 14;
    if (y + h > window.innerHeight - 8) y = point.y - h - 14;
    tip.style.left = `${Math.max(8, x)}px`;
    tip.style.top = `${Math.max(8, y)}px`;
  }

  function hideHover() {
    $('tooltip').hidden = true;
    state.hover = null;
    if (state.hoverRect) { state.hoverRect.remove(); state.hoverRect = null; }
    emit('pointer', null, null);
  }

  // the pointer moved over the map of `side` (the main map's, or the aligned view's other one):
  // the tooltip of the cell under it, with the cell outlined
  async function pointerMove(e, side = state) {
    const level = currentLevel(side);
    const hit = cellAt(e.latlng, level, side);
    const key = hit ? `${side === state ? 'main' : 'peer'}:${level.size}:${hit.id}` : null;
    const point = L.point(e.originalEvent.clientX, e.originalEvent.clientY); // the page's, whichever map
    if (key === state.hover) {
      if (key && !$('tooltip').hidden) placeTooltip(point);
      emit('pointer', side, e.latlng);
      return;
    }
    hideHover();
    emit('pointer', side, e.latlng);
    if (!hit) return;
    state.hover = key;
    let info = null;
    try { info = await lookupCell(level, hit.iy, hit.ix, side); } catch (err) { return; }
    if (state.hover !== key || !side.map) return; // the mouse moved on meanwhile
    if (!info) { state.hover = key; return; }
    state.hoverRect = L.rectangle(cellBounds(level, hit.iy, hit.ix, side), { className: 'cell-hover', fill: false, interactive: false }).addTo(side.map);
    renderTooltip(info, point);
  }

  // ---- side panel ---------------------------------------------------------------------------

  async function openPanel(level, iy, ix, { quiet } = {}) {
    let info;
    try { info = await lookupCell(level, iy, ix); } catch (err) { return; }
    if (!info) { if (!quiet) closePanel(); return; }
    const { cell } = info;
    state.selected = { size: level.size, id: cell.id, iy, ix };
    if (state.selectedRect) state.selectedRect.remove();
    state.selectedRect = L.rectangle(cellBounds(level, iy, ix), { className: 'cell-selected', fill: false, interactive: false }).addTo(state.map);

    const top = cell.top.find((p) => p[1] > 0);
    const thumbs = (cell.thumbs || []).filter(Boolean);
    const body = $('panel-body');
    body.replaceChildren(
      el('h2', { text: top ? className(info.names, top[0]) : `Cell ${cell.iy}, ${cell.ix}` }),
      el('div', { cls: 'panel-icon-wrap' }, [
        iconNode(info, 'panel-icon'),
        el('div', { cls: 'panel-facts' }, [
          el('b', { text: fmt.format(cell.count) }), 'activations',
          el('br'), `grid ${level.size}×${level.size}`, el('br'), `cell ${cell.iy}, ${cell.ix}`,
        ]),
      ]),
      ...(cell.fallback ? [el('p', { cls: 'panel-note panel-fallback', text: fallbackText(cell) })] : []),
      el('h3', { text: 'Top classes by attribution' }),
      classList(info, 10, (name) => setClass(name)),
      el('h3', { text: 'Dataset examples' }),
      el('div', { cls: 'thumbs' }, thumbs.length
        ? thumbs.map((t, i) => el('img', {
          src: state.run.base + urlPath(t) + version(), loading: 'lazy',
          alt: `dataset example ${i + 1} (image ${cell.examples[i]})`, title: `image ${cell.examples[i]}`,
        }))
        : el('div', { cls: 'none', text: state.m.thumbs ? 'no examples stored for this cell' : 'no example thumbnails (build the tiles with activations to add them)' })),
      el('p', { cls: 'panel-note', text: 'Each example is the patch of a photo around the position whose activation landed in this cell. Click a class to highlight it across the atlas.' }),
    );
    $('panel').hidden = false;
    $('panel').dataset.cell = `${level.size}:${cell.id}`;
    scheduleHash();
  }

  function closePanel() {
    $('panel').hidden = true;
    state.selected = null;
    if (state.selectedRect) { state.selectedRect.remove(); state.selectedRect = null; }
    scheduleHash();
  }

  function onClick(e) {
    hideHover();
    const level = currentLevel();
    const hit = cellAt(e.latlng, level);
    if (!hit) { closePanel(); return; }
    openPanel(level, hit.iy, hit.ix);
  }

  // ---- class highlight ----------------------------------------------------------------------

  const HighlightLayer = L.Layer.extend({
    onAdd(map) {
      this._canvas = L.DomUtil.create('canvas', 'atlas-highlight leaflet-zoom-hide');
      map.getPanes().overlayPane.appendChild(this._canvas);
      map.on('moveend zoomend resize viewreset', this.redraw, this);
      this.redraw();
    },
    onRemove(map) {
      map.off('moveend zoomend resize viewreset', this.redraw, this);
      this._canvas.remove();
      delete document.body.dataset.highlightCount;
    },
    redraw() {
      const map = this._map;
      if (!map || !state.klass) return;
      const size = map.getSize();
      const pad = size.multiplyBy(0.5).round();
      const full = size.add(pad.multiplyBy(2));
      const topLeft = map.containerPointToLayerPoint(pad.multiplyBy(-1));
      const dpr = window.devicePixelRatio || 1;
      const canvas = this._canvas;
      L.DomUtil.setPosition(canvas, topLeft);
      canvas.width = Math.round(full.x * dpr);
      canvas.height = Math.round(full.y * dpr);
      canvas.style.width = `${full.x}px`;
      canvas.style.height = `${full.y}px`;
      const ctx = canvas.getContext('2d');
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, full.x, full.y);

      const level = currentLevel();
      const data = state.klass.levels[String(level.size)] || { max: 0, cells: [] };
      const m = state.m;
      const toCanvas = (lat, lng) => map.latLngToContainerPoint([lat, lng]).add(pad);
      const a = toCanvas(m.margin_px, m.margin_px);
      const b = toCanvas(m.margin_px + m.content_px, m.margin_px + m.content_px);
      const bg = m.background;
      ctx.fillStyle = bg;
      ctx.globalAlpha = DIM;
      ctx.fillRect(a.x, a.y, b.x - a.x, b.y - a.y);
      const c = (b.x - a.x) / level.size;
      let shown = 0;
      for (const [id, value] of data.cells) {
        const iy = Math.floor(id / level.size), ix = id % level.size;
        const x = a.x + ix * c, y = a.y + iy * c;
        ctx.clearRect(x, y, c, c);
        const strength = data.max > 0 ? Math.min(1, value / data.max) : 0;
        ctx.globalAlpha = DIM * (1 - strength); // opacity of the icon = attribution / max
        ctx.fillRect(x, y, c, c);
        shown += 1;
      }
      ctx.globalAlpha = 1;
      canvas.dataset.level = level.size;
      canvas.dataset.count = shown;
      canvas.dataset.max = data.max;
      document.body.dataset.highlightCount = shown;
      $('class-count').textContent = `${shown} cell${shown === 1 ? '' : 's'} at grid ${level.size}`;
    },
  });

  async function staticClass(name) { // an export's precomputed per-class files
    const query = name.trim().toLowerCase().replace(/_/g, ' ');
    const classes = state.m.classes;
    const index = /^\d+$/.test(query) && +query < classes.length ? +query : classes.findIndex((n) => n.toLowerCase() === query);
    if (index < 0) { const err = new Error('unknown class'); err.status = 404; throw err; }
    if (!state.classIndex) state.classIndex = getJSON(`${state.run.base}classes/index.json${version()}`).then((d) => new Set(d.classes));
    const present = await state.classIndex;
    if (!present.has(index)) { // no cell of this atlas is attributed to the class
      return { class: { index, name: classes[index] }, levels: Object.fromEntries(state.m.levels.map((lv) => [String(lv.size), { max: 0, cells: [] }])) };
    }
    return getJSON(`${state.run.base}classes/${index}.json${version()}`);
  }

  function flyToClass() { // bring the highlighted cells into view (zooming out, never in)
    const level = currentLevel();
    const data = state.klass.levels[String(level.size)];
    if (!data || !data.cells.length) return;
    const strong = data.cells.filter(([, v]) => v >= 0.25 * data.max);
    let bounds = null;
    for (const [id] of strong) {
      const b = cellBounds(level, Math.floor(id / level.size), id % level.size);
      bounds = bounds ? bounds.extend(b) : L.latLngBounds(b.getSouthWest(), b.getNorthEast());
    }
    const view = state.map.getBounds();
    if (strong.every(([id]) => view.contains(cellBounds(level, Math.floor(id / level.size), id % level.size).getCenter()))) return;
    const zoom = Math.min(state.map.getZoom(), state.map.getBoundsZoom(bounds, false, L.point(80, 80)));
    state.map.flyTo(bounds.getCenter(), zoom, { duration: 0.6 });
  }

  async function setClass(name, { fly } = {}) {
    if (!name) { clearClass(); return; }
    let data;
    try {
      data = state.api
        ? await getJSON(`api/class?run=${encodeURIComponent(state.run.id)}&name=${encodeURIComponent(name)}`)
        : await staticClass(name);
    } catch (err) {
      $('class-chip').hidden = false;
      $('class-name').textContent = name;
      $('class-count').textContent = err.status === 404 ? 'unknown class' : 'could not load';
      return;
    }
    state.klass = { name: data.class.name, index: data.class.index, levels: data.levels };
    $('class-name').textContent = data.class.name;
    $('class-chip').hidden = false;
    $('search-input').value = '';
    if (!state.highlightLayer) state.highlightLayer = new HighlightLayer().addTo(state.map);
    else state.highlightLayer.redraw();
    document.body.dataset.highlightClass = data.class.name;
    if (fly) flyToClass();
    if (state.selected) {
      const level = state.m.levels.find((lv) => lv.size === state.selected.size);
      if (level) openPanel(level, state.selected.iy, state.selected.ix, { quiet: true });
    }
    scheduleHash();
  }

  function clearClass() {
    state.klass = null;
    if (state.highlightLayer) { state.highlightLayer.remove(); state.highlightLayer = null; }
    $('class-chip').hidden = true;
    delete document.body.dataset.highlightClass;
    scheduleHash();
  }

  // ---- photo overlays: "where does this photo live in the atlas" ---------------------------

  function overlayColor(a, max) { // red toward the explained class, blue away; stronger = darker
    const t = Math.min(1, Math.abs(a) / (max || 1));
    const light = Math.round(88 - 48 * t);
    return a >= 0 ? `hsl(4, 78%, ${light}%)` : `hsl(212, 72%, ${light}%)`;
  }

  async function showOverlay(name, on) {
    const entry = state.overlays.find((o) => o.name === name);
    if (!entry) return;
    if (!on) {
      const layer = state.shown.get(name);
      if (layer) layer.remove();
      state.shown.delete(name);
    } else if (!state.shown.has(name)) {
      let doc;
      try {
        doc = await getJSON(state.run.base + urlPath(entry.file) + version());
      } catch (err) {
        showMessage(`Could not load the photo overlay “${name}”: ${err.message}`);
        return;
      }
      const group = L.layerGroup();
      const pts = doc.points.slice().sort((p, q) => Math.abs(p.a) - Math.abs(q.a)); // strongest on top
      for (const p of pts) {
        const t = Math.min(1, Math.abs(p.a) / (doc.max_abs || 1));
        L.circleMarker(toLatLng(p.x, p.y), {
          radius: 3 + 7 * t, weight: 1, color: '#222', opacity: 0.8, fillOpacity: 0.9,
          fillColor: overlayColor(p.a, doc.max_abs), className: 'overlay-point',
        }).bindTooltip(el('span', {}, [
          `${doc.photo} · position (${p.pos[0]}, ${p.pos[1]}) of ${doc.grid[0]}×${doc.grid[1]}`, el('br'),
          `attribution to “${doc.class}”: ${p.a >= 0 ? '+' : ''}${formatValue(p.a)}`,
        ]), { direction: 'top' }).addTo(group);
      }
      group.doc = doc;
      group.addTo(state.map);
      state.shown.set(name, group);
    }
    const box = $('photos');
    const input = box.querySelector(`input[data-name="${CSS.escape(name)}"]`);
    if (input) input.checked = state.shown.has(name);
    renderOverlayLegend();
    document.body.dataset.overlayPoints = [...state.shown.values()].reduce((s, g) => s + g.getLayers().length, 0);
    scheduleHash();
  }

  function renderOverlayLegend() {
    const legend = $('photos-legend');
    const docs = [...state.shown.values()].map((g) => g.doc);
    legend.replaceChildren(...docs.map((doc) => el('figure', { cls: 'photo-card' }, [
      el('img', { src: /^data:image\//.test(doc.thumb) ? doc.thumb : null, alt: doc.photo }), // the photo, inline
      el('figcaption', {}, [el('b', { text: doc.class }), ` p=${doc.probability.toFixed(2)}`, el('br'),
        el('span', { cls: 'muted', text: `${doc.points.length} positions · ${doc.layer}` })]),
    ])));
    legend.hidden = docs.length === 0;
  }

  // An index the run may hold: from the server's api/NAME, or from FILE in an export; null when
  // there is none.
  async function runIndex(name, file) {
    try {
      return await getJSON(state.api
        ? `api/${name}?run=${encodeURIComponent(state.run.id)}`
        : `${state.run.base}${file}${version()}`);
    } catch (err) {
      return null;
    }
  }

  async function loadOverlays() {
    state.overlays = [];
    state.shown.clear();
    const part = $('photos-part');
    part.hidden = true;
    const index = await runIndex('overlays', 'overlays/index.json');
    if (!index) return; // no photo placed on this atlas yet
    state.overlays = (index.overlays || []).filter((o) => o && o.name && o.file);
    if (!state.overlays.length) return;
    $('photos-list').replaceChildren(...state.overlays.map((o) => el('li', {}, [
      el('label', { title: `${o.photo}: explaining “${o.class}”` }, [
        el('input', { type: 'checkbox', 'data-name': o.name, onchange: (ev) => showOverlay(o.name, ev.target.checked) }),
        el('span', { cls: 'name', text: o.name }),
        el('span', { cls: 'muted', text: o['class'] }),
      ]),
    ])));
    renderOverlayLegend();
    part.hidden = false;
  }

  // ---- channel views: one photo's channels beside their feature visualizations ------------
  // api/channels (atlas serve) or <base>channels/index.json (an export), from the run's
  // channels/index.json written by `atlas channels PHOTO --run RUN`; each page is static.

  async function loadChannelViews() {
    const part = $('channel-views');
    part.hidden = true;
    const index = await runIndex('channels', 'channels/index.json');
    if (!index) return; // no channel view written into this atlas
    const views = (index.views || []).filter((v) => v && v.name && v.page && !/^[a-z]+:|^\/|\.\./i.test(v.page));
    if (!views.length) return;
    $('channel-views-list').replaceChildren(...views.map((v) => el('li', {}, [
      el('a', { href: state.run.base + urlPath(v.page), target: '_blank', rel: 'noopener', text: v.photo || v.name }),
      el('span', { cls: 'muted', text: ` ${v.layer || ''}` }),
    ])));
    part.hidden = false;
  }

  // ---- a comparison atlas: its axis, and the neighbourhoods an attack chose --------------
  // The run's "comparison" (from the manifest `atlas compare` wrote) says which class lies on
  // which side; api/attacks?run= (atlas serve) places the cells of the attack reports of the
  // same two classes on this map: a mark per cell (the centroid of its rows here, their box),
  // and the cells none of whose rows is on this map, listed only.

  function renderAxis() {
    const axis = $('axis');
    const c = state.run && state.run.comparison;
    if (!c || !c.left || !c.right) {
      axis.hidden = true;
      axis.replaceChildren();
      delete document.body.dataset.axis;
      return;
    }
    axis.replaceChildren(
      el('span', { cls: 'axis-side left', title: `more attributed to “${c.left.name}”` }, [
        el('span', { cls: 'arrow', 'aria-hidden': 'true', text: '←' }),
        el('span', { id: 'axis-left', cls: 'axis-name', text: c.left.name }),
      ]),
      el('span', { cls: 'axis-rule', 'aria-hidden': 'true' }),
      el('span', { id: 'axis-mid', cls: 'axis-mid', text: c.x || 'attribution difference' }),
      el('span', { cls: 'axis-rule', 'aria-hidden': 'true' }),
      el('span', { cls: 'axis-side right', title: `more attributed to “${c.right.name}”` }, [
        el('span', { id: 'axis-right', cls: 'axis-name', text: c.right.name }),
        el('span', { cls: 'arrow', 'aria-hidden': 'true', text: '→' }),
      ]),
    );
    axis.setAttribute('aria-label', `Comparison axis: ${c.left.name} to the left, ${c.right.name} to the right; x is the ${c.x || 'attribution difference'}`);
    axis.hidden = false;
    document.body.dataset.axis = '1';
  }

  function percent(v) {
    return typeof v === 'number' && Number.isFinite(v) ? `${Math.round(100 * v)}%` : null;
  }

  function markKind(mark) { return mark.kind === 'third' ? 'third' : 'target'; }

  function cellName(mark) {
    const [size, iy, ix] = mark.cell;
    return `cell ${size}:${iy},${ix}`;
  }

  function flipped(mark) {
    const rate = percent(mark.success);
    return rate ? ` · ${rate} flipped` : '';
  }

  function classesText(marks) {
    const named = marks.find((m) => (m.classes || []).length);
    return named ? named.classes.slice(0, 3).join(', ') : 'no positive class';
  }

  // the label of the marks of one cell (one per report that chose it): kind, cell, success
  // rate and top classes; a list entry adds the attack and how many of the cell's rows are here
  function markLabel(marks, withCounts) {
    const first = marks[0];
    const lines = marks.length === 1
      ? [el('b', { text: `${markKind(first)} · ${cellName(first)}${flipped(first)}` })]
      : [el('b', { text: cellName(first) }),
        ...marks.map((m) => el('span', { text: `${markKind(m)}${flipped(m)} (${m.source} → ${m.target})` }))];
    const children = [];
    for (const line of lines) children.push(line, el('br'));
    children.push(el('span', { text: classesText(marks) }));
    if (withCounts) {
      children.push(el('br'), el('span', { cls: 'muted', text: `${first.source} → ${first.target} · ${fmt.format(first.rows)} of the cell's ${fmt.format(first.cell_rows)} rows on this map` }));
    }
    return el('span', { cls: 'attack-text' }, children);
  }

  function drawAttackMarks() {
    if (state.attackLayer) { state.attackLayer.remove(); state.attackLayer = null; }
    const doc = state.attacks;
    const on = $('attack-toggle').checked;
    document.body.dataset.attackMarks = '0';
    if (!doc || !on || !state.map) return;
    const group = L.layerGroup();
    const byCell = new Map(); // a cell chosen by several reports is one mark with every report's line
    for (const mark of doc.marks) {
      const key = mark.cell.join(':');
      if (!byCell.has(key)) byCell.set(key, []);
      byCell.get(key).push(mark);
    }
    for (const marks of byCell.values()) {
      const mark = marks[0];
      const kind = markKind(mark);
      const [x0, y0, x1, y1] = mark.bbox;
      L.rectangle(L.latLngBounds(toLatLng(x0, y0), toLatLng(x1, y1)), {
        className: `attack-box attack-${kind}`, weight: 1.5, dashArray: '4 4', fill: false, interactive: false,
      }).addTo(group);
      const dot = L.circleMarker(toLatLng(mark.center[0], mark.center[1]), {
        radius: 7, weight: 2.5, className: `attack-mark attack-${kind}`, fillOpacity: 0.35,
      }).bindTooltip(markLabel(marks, false), {
        permanent: true, direction: 'top', offset: [0, -8], className: `attack-label attack-${kind}`,
      });
      dot.on('mouseover', () => dot.setStyle({ radius: 9 }));
      dot.on('mouseout', () => dot.setStyle({ radius: 7 }));
      // the elements exist once the map has a view (openRun sets it after the side panels load)
      dot.on('add', () => Object.assign(dot.getElement().dataset, { cell: mark.cell.join(':'), kind }));
      dot.on('tooltipopen', (ev) => { ev.tooltip.getElement().dataset.cell = mark.cell.join(':'); });
      dot.addTo(group);
    }
    group.addTo(state.map);
    state.attackLayer = group;
    document.body.dataset.attackMarks = String(byCell.size);
  }

  async function loadAttacks() {
    state.attacks = null;
    const part = $('attack-part');
    part.hidden = true;
    if (!state.run.comparison) return;
    const doc = await runIndex('attacks', 'attacks.json');
    if (!doc || !Array.isArray(doc.marks) || !Array.isArray(doc.off_map)) return;
    const valid = (m) => m && Array.isArray(m.cell) && m.cell.length === 3;
    const finite = (a, n) => Array.isArray(a) && a.length === n && a.every((v) => typeof v === 'number' && Number.isFinite(v));
    doc.marks = doc.marks.filter((m) => valid(m) && finite(m.center, 2) && finite(m.bbox, 4));
    doc.off_map = doc.off_map.filter(valid);
    if (!doc.marks.length && !doc.off_map.length) return; // no attack of these two classes yet
    state.attacks = doc;
    $('attack-list').replaceChildren(...doc.marks.map((mark) => el('li', { cls: `attack-item attack-${markKind(mark)}` }, [
      el('button', {
        type: 'button', cls: 'link', title: 'Show this neighbourhood',
        onclick: () => {
          if (!$('attack-toggle').checked) { $('attack-toggle').checked = true; drawAttackMarks(); }
          state.map.flyTo(toLatLng(mark.center[0], mark.center[1]), Math.max(state.map.getZoom(), 1), { duration: 0.5 });
        },
      }, [markLabel([mark], true)]),
    ])));
    $('attack-off-list').replaceChildren(...doc.off_map.map((mark) => el('li', {
      cls: `attack-item attack-${markKind(mark)}`, 'data-cell': mark.cell.join(':'), title: mark.reason || '',
    }, [markLabel([mark], true)])));
    $('attack-off').hidden = doc.off_map.length === 0;
    $('attack-success').textContent = doc.success ? `flipped: ${doc.success}` : '';
    $('attack-success').hidden = !doc.success || !doc.marks.concat(doc.off_map).some((m) => typeof m.success === 'number');
    document.body.dataset.attackOffMap = String(doc.off_map.length);
    part.hidden = false;
  }

  async function loadSidePanels() {
    await Promise.all([loadOverlays(), loadChannelViews(), loadAttacks()]);
    $('photos').hidden = $('photos-part').hidden && $('channel-views').hidden && $('attack-part').hidden;
    drawAttackMarks();
  }

  // ---- search box with autocomplete ---------------------------------------------------------

  function setupSearch() {
    const input = $('search-input');
    const list = $('search-list');
    let items = [];
    let active = -1;

    function matches(q) {
      const query = q.trim().toLowerCase();
      if (!query) return [];
      const names = state.m.classes;
      const starts = [], words = [], contains = [];
      names.forEach((n, i) => {
        const low = n.toLowerCase();
        const at = low.indexOf(query);
        if (at === 0) starts.push(i);
        else if (at > 0 && /[\s\-'(]/.test(low[at - 1])) words.push(i);
        else if (at > 0) contains.push(i);
      });
      return starts.concat(words, contains).slice(0, 12);
    }

    function render() {
      const q = input.value.trim().toLowerCase();
      items = matches(q);
      active = items.length ? 0 : -1;
      list.replaceChildren(...(items.length ? items.map((i, k) => {
        const name = state.m.classes[i];
        const at = name.toLowerCase().indexOf(q);
        return el('li', {
          role: 'option', id: `opt-${k}`, 'aria-selected': k === active ? 'true' : 'false',
          onmousedown: (ev) => { ev.preventDefault(); pick(k); },
        }, [
          el('span', {}, [name.slice(0, at), el('mark', { text: name.slice(at, at + q.length) }), name.slice(at + q.length)]),
          el('span', { cls: 'idx', text: `#${i}` }),
        ]);
      }) : [el('li', { cls: 'empty', text: q ? 'no class matches' : '' })]));
      const open = q.length > 0;
      list.hidden = !open;
      input.setAttribute('aria-expanded', open ? 'true' : 'false');
    }

    function move(delta) {
      if (!items.length) return;
      active = (active + delta + items.length) % items.length;
      [...list.children].forEach((li, k) => li.setAttribute('aria-selected', k === active ? 'true' : 'false'));
      list.children[active].scrollIntoView({ block: 'nearest' });
      input.setAttribute('aria-activedescendant', `opt-${active}`);
    }

    function pick(k) {
      const i = items[k];
      if (i === undefined) return;
      list.hidden = true;
      input.setAttribute('aria-expanded', 'false');
      input.blur();
      setClass(state.m.classes[i], { fly: true });
    }

    input.addEventListener('input', render);
    input.addEventListener('focus', () => { if (input.value) render(); });
    input.addEventListener('blur', () => { list.hidden = true; input.setAttribute('aria-expanded', 'false'); });
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'ArrowDown') { ev.preventDefault(); move(1); }
      else if (ev.key === 'ArrowUp') { ev.preventDefault(); move(-1); }
      else if (ev.key === 'Enter') { ev.preventDefault(); pick(Math.max(0, active)); }
      else if (ev.key === 'Escape') { input.value = ''; render(); input.blur(); }
    });
    $('class-clear').addEventListener('click', clearClass);
  }

  // ---- deep links ---------------------------------------------------------------------------

  function parseHash() {
    const p = new URLSearchParams(location.hash.replace(/^#/, ''));
    return {
      run: p.get('run'), z: num(p.get('z'), null), x: num(p.get('x'), null), y: num(p.get('y'), null),
      klass: p.get('class'), cell: p.get('cell'), params: p,
      photos: (p.get('photo') || '').split(',').filter(Boolean).map((n) => { try { return decodeURIComponent(n); } catch (e) { return n; } }),
    };
  }

  function scheduleHash() {
    if (state.restoring) return;
    clearTimeout(state.hashTimer);
    state.hashTimer = setTimeout(writeHash, 120);
  }

  function writeHash() {
    if (!state.map || state.restoring) return;
    const { u, v } = toLayout(state.map.getCenter());
    const p = new URLSearchParams();
    if (state.runs.length > 1) p.set('run', state.run.id);
    p.set('z', state.map.getZoom().toFixed(2));
    p.set('x', u.toFixed(4));
    p.set('y', v.toFixed(4));
    if (state.klass) p.set('class', state.klass.name);
    if (state.selected) p.set('cell', `${state.selected.size}:${state.selected.id}`);
    if (state.shown.size) p.set('photo', [...state.shown.keys()].map(encodeURIComponent).join(','));
    emit('hash', p);
    // readable links: '/' and ':' need no escaping in a fragment
    const hash = '#' + p.toString().replace(/\+/g, '%20').replace(/%2F/g, '/').replace(/%3A/g, ':');
    if (hash !== location.hash) history.replaceState(null, '', hash);
  }

  async function applyView(view) {
    state.restoring = true;
    try {
      const m = state.m;
      const wanted = view.zFrom ? relativeZoom(view.zFrom.z, view.zFrom.m, m) : view.z;
      if (Number.isFinite(wanted) && Number.isFinite(view.x) && Number.isFinite(view.y)) {
        const z = Math.max(m.min_zoom, Math.min(m.max_zoom, wanted));
        state.map.setView(toLatLng(view.x, view.y), z, { animate: false });
      } else {
        state.map.fitBounds(L.latLngBounds(toLatLng(0, 0), toLatLng(1, 1)), { padding: [40, 40], animate: false });
      }
      if (view.klass && (!state.klass || state.klass.name.toLowerCase() !== view.klass.toLowerCase())) await setClass(view.klass);
      else if (!view.klass && state.klass) clearClass();
      if (view.cell) {
        const [size, id] = view.cell.split(':').map((s) => parseInt(s, 10));
        const level = m.levels.find((lv) => lv.size === size);
        if (level && id >= 0 && id < size * size) await openPanel(level, Math.floor(id / size), id % size, { quiet: true });
      } else if (state.selected) {
        closePanel();
      }
      const want = new Set(view.photos || []);
      for (const name of [...state.shown.keys()]) if (!want.has(name)) await showOverlay(name, false);
      for (const name of want) if (!state.shown.has(name)) await showOverlay(name, true);
      emit('view', view);
    } finally {
      state.restoring = false;
    }
  }

  // ---- map ----------------------------------------------------------------------------------

  function updateStatus() {
    const level = currentLevel();
    $('status-level').textContent = `grid ${level.size}×${level.size} · ${fmt.format(level.n_cells)} cells · zoom ${state.map.getZoom().toFixed(2).replace(/\.?0+$/, '')}`;
    document.body.dataset.level = level.size;
    document.body.dataset.zoom = state.map.getZoom();
    // cells not rendered show their nearest rendered ancestor's icon, scaled, or grey without one
    const pending = state.m.levels.reduce((s, lv) => s + lv.n_cells - lv.n_done, 0);
    const here = level.n_cells - level.n_done;
    const from = Object.entries(level.fallbacks || {}).sort((a, b) => b[0] - a[0]);
    const stand = from.reduce((s, [, n]) => s + n, 0);
    const parts = [];
    if (here > 0) {
      parts.push(`grid ${level.size}×${level.size}: ${fmt.format(here)} of ${fmt.format(level.n_cells)} icons not rendered`);
      if (stand > 0) parts.push(`shown as the ${from.map(([s]) => `${s}×${s}`).join(' / ')} icons of their area, scaled`);
      if (here > stand) parts.push(`${fmt.format(here - stand)} grey`);
    } else if (pending > 0) {
      parts.push(`${fmt.format(pending)} icons of other grids not rendered`);
    }
    $('status-pending').hidden = parts.length === 0;
    $('status-pending').textContent = parts.join(' · ');
    document.body.dataset.fallback = stand > 0 && here > 0 ? '1' : '';
  }

  async function openRun(run, view) {
    emit('close', run);
    state.run = run;
    state.regions.clear();
    state.classIndex = null;
    hideHover();
    if (state.map) { state.map.remove(); state.map = null; state.highlightLayer = null; state.selectedRect = null; state.attackLayer = null; }
    state.klass = null;
    state.selected = null;
    $('panel').hidden = true;
    $('class-chip').hidden = true;
    let m;
    try {
      m = await getJSON(run.base + 'manifest.json?v=' + encodeURIComponent(run.build || ''));
    } catch (err) {
      showMessage(`Could not load the atlas “${run.id}”: ${err.message}`);
      return;
    }
    state.m = m;
    document.title = `${m.title} — Activation Atlas`;
    $('title').textContent = 'Activation Atlas';
    $('subtitle').textContent = [run.name, m.model, m.layer].filter(Boolean).join(' · ');
    // inputs rebuilt since these tiles were drawn (the server's check): say so, with the details on hover
    const warnings = run.warnings || [];
    $('subtitle').title = warnings.join('\n');
    if (warnings.length) $('subtitle').textContent += ' · out of date';
    document.documentElement.style.setProperty('--bg', m.background);
    $('run-select').value = run.id;
    renderAxis();

    emit('layout', run, view || {}); // the aligned view halves the page before the map measures it
    const { map, tiles } = createMap('map', run, m);
    state.map = map;
    state.tiles = tiles;
    state.tiles.on('tileload', () => { state.tilesLoaded += 1; document.body.dataset.tilesLoaded = state.tilesLoaded; });
    state.tiles.on('load', () => { document.body.dataset.ready = '1'; });

    map.on('mousemove', (e) => pointerMove(e));
    map.on('mouseout dragstart zoomstart movestart', hideHover);
    map.on('click', onClick);
    map.on('zoomend', () => { hideHover(); updateStatus(); });
    map.on('moveend', () => { updateStatus(); scheduleHash(); });

    await loadSidePanels();
    await applyView(view || {});
    updateStatus();
    writeHash();
    window.atlasViewer.map = map;
    emit('open', run, view || {});
    document.body.dataset.opened = run.id;
  }

  // a Leaflet map of the atlas `run` (manifest `m`) in the element `container`: a flat CRS with y
  // down, one map unit a pixel at the deepest tiled zoom
  function createMap(container, run, m) {
    const k = Math.pow(2, -m.max_native_zoom);
    const crs = L.extend({}, L.CRS.Simple, { transformation: new L.Transformation(k, 0, k, 0) });
    const world = L.latLngBounds([0, 0], [m.world_px, m.world_px]);
    const map = L.map(container, {
      crs, minZoom: m.min_zoom, maxZoom: m.max_zoom, zoomSnap: 0.25, zoomDelta: 0.5, wheelPxPerZoomLevel: 80,
      attributionControl: false, zoomControl: false, keyboard: true, keyboardPanDelta: 120,
      maxBounds: world.pad(0.25), maxBoundsViscosity: 0.7, bounceAtZoomLimits: false,
    });
    L.control.zoom({ position: 'topleft' }).addTo(map);
    const tiles = L.tileLayer(`${run.base}${m.tile_url}${version({ m })}`, {
      tileSize: m.tile_size, minZoom: m.min_zoom, maxZoom: m.max_zoom, minNativeZoom: 0, maxNativeZoom: m.max_native_zoom,
      bounds: world, noWrap: true, keepBuffer: 3, className: 'atlas-tiles', updateWhenZooming: false,
    }).addTo(map);
    return { map, tiles };
  }

  // open another atlas (another layer of the run) where this one is, in relative terms: the same
  // point of the layout at the centre, the layout as large on screen; with the same class
  // highlight and the same text in the search box
  async function switchRun(run, extra) {
    if (!state.map || !state.m) { await openRun(run, extra || {}); return; }
    const text = $('search-input').value;
    const { u, v } = toLayout(state.map.getCenter());
    await openRun(run, {
      x: u, y: v, z: null, zFrom: { z: state.map.getZoom(), m: state.m },
      klass: state.klass ? state.klass.name : null, cell: null, photos: [], ...(extra || {}),
    });
    $('search-input').value = text;
  }

  // the picker's entry of a run: the layer atlases of a multi-layer run are one group, by layer
  // in the model's order, and the two sides of an aligned atlas another
  function pickerEntry(r) {
    const l = r.layers, a = r.aligned;
    if (l && Array.isArray(l.names)) {
      const layer = l.names.find((n) => l.ids && l.ids[n] === r.id) || r.layer;
      return { group: `layers\u0000${l.group}`, label: `${r.name} · layers`, text: layer, order: l.names.indexOf(layer) };
    }
    if (a && a.name) {
      const at = r.id.lastIndexOf(`/${a.side}/tiles`);
      const group = `aligned\u0000${at > 0 ? r.id.slice(0, at) : a.name}`;
      return { group, label: `${r.name} · aligned ${a.name}`, text: `${a.side}: ${a.label}`, order: a.side === 'a' ? 0 : 1 };
    }
    return { group: null, text: r.label, order: 0 };
  }

  function setupRuns() {
    const select = $('run-select');
    const option = (r, text) => el('option', { value: r.id, text: text + (r.complete ? '' : ' (rendering)') + ((r.warnings || []).length ? ' (out of date)' : '') });
    const groups = new Map();
    const entries = [];
    for (const r of state.runs) {
      const entry = pickerEntry(r);
      if (entry.group === null) { entries.push(option(r, entry.text)); continue; }
      if (!groups.has(entry.group)) {
        groups.set(entry.group, { node: el('optgroup', { label: entry.label }), items: [] });
        entries.push(groups.get(entry.group).node);
      }
      groups.get(entry.group).items.push([entry.order, option(r, entry.text)]);
    }
    for (const { node, items } of groups.values()) node.append(...items.sort((x, y) => x[0] - y[0]).map(([, o]) => o));
    select.replaceChildren(...entries);
    $('run-picker').hidden = state.runs.length < 2;
    select.addEventListener('change', () => {
      const run = state.runs.find((r) => r.id === select.value);
      if (run) openRun(run, { z: null, x: null, y: null });
    });
  }

  async function main() {
    setupSearch();
    // the top bar wraps on narrow windows: what sits below it (zoom buttons, panel, map labels) follows
    const bar = $('bar');
    const barBottom = () => document.documentElement.style.setProperty('--bar-bottom', `${Math.round(bar.getBoundingClientRect().bottom)}px`);
    if (window.ResizeObserver) new ResizeObserver(barBottom).observe(bar);
    barBottom();
    $('panel-close').addEventListener('click', closePanel);
    $('attack-toggle').addEventListener('change', drawAttackMarks);
    document.addEventListener('keydown', (ev) => {
      const typing = ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement;
      if (ev.key === '/' && !typing) { ev.preventDefault(); $('search-input').focus(); }
      else if (ev.key === 'Escape' && !typing) { closePanel(); hideHover(); }
    });
    window.addEventListener('hashchange', async () => {
      const view = parseHash();
      if (view.run && state.run && view.run !== state.run.id) {
        const run = state.runs.find((r) => r.id === view.run);
        if (run) { await openRun(run, view); return; }
      }
      if (state.map) await applyView(view);
    });
    let runs;
    try {
      const doc = await getJSON('atlas.json');
      runs = doc.runs;
      state.api = doc.api !== false;
    } catch (err) {
      showMessage(`Could not load the list of atlases (atlas.json): ${err.message}`);
      return;
    }
    state.runs = runs;
    if (!runs.length) { showMessage('No atlas here yet: build one with `atlas tiles`, then reload.'); return; }
    setupRuns();
    const view = parseHash();
    const run = runs.find((r) => r.id === view.run) || runs[0];
    await openRun(run, view);
    $('map').focus({ preventScroll: true });
  }

  window.atlasViewer = {
    state, setClass, clearClass, openPanel, showOverlay, toLatLng, toLayout, cellAt, currentLevel, map: null,
    // for layers.js and aligned.js
    on, el, getJSON, openRun, switchRun, createMap, relativeZoom, pointerMove, hideHover, scheduleHash, updateStatus,
  };
  for (const feature of window.atlasViewerFeatures || []) feature(window.atlasViewer);
  main();
}());
