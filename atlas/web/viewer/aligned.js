/* Activation atlas viewer: the aligned view (loaded before atlas.js, which calls it with its API).
 *
 * An aligned atlas has two sides laid out together (RUN/aligned/<name>/a/tiles and .../b/tiles):
 * the same place on both maps holds the same inputs. The server lists each side with "aligned":
 * { name, side, label, peer_id, peer_label }. Opening either side shows both maps side by side
 * (side a on the left), each labelled: the opened side is the main map (class highlight, click
 * panel, photos, deep links), the other follows it. Pan and zoom are linked both ways in relative
 * terms (the same point of the layout at the centre, the layout as large on screen), however the
 * two grids differ; hovering either map shows its cell's tooltip and a crosshair at the same
 * point of the other. "Single map" goes back to one map (the hash's single=1 keeps it so).
 */
(function () {
  'use strict';

  (window.atlasViewerFeatures = window.atlasViewerFeatures || []).push((viewer) => {
    const { state } = viewer;
    const $ = (id) => document.getElementById(id);
    // peer: the other side ({ run, m, map, regions, tiles }); cross: the crosshair marker and the
    // side whose map shows it; syncing: a map is being moved to follow the other
    const me = { peer: null, single: false, syncing: false, cross: null, crossSide: null, opening: 0 };
    viewer.aligned = me;

    function peerRun(run) {
      const a = run && run.aligned;
      if (!a || typeof a.peer_id !== 'string') return null;
      return state.runs.find((r) => r.id === a.peer_id) || null;
    }

    function shown(run) { return !!peerRun(run) && !me.single; }

    // ---- layout: two halves, each with its label --------------------------------------------

    function layout(run, view) {
      if (view && view.params) me.single = view.params.get('single') === '1';
      const both = shown(run);
      document.body.classList.toggle('aligned', both);
      document.body.classList.toggle('main-right', both && run.aligned.side === 'b');
      $('map-peer').hidden = !both;
      $('map-label').hidden = !both;
      $('peer-label').hidden = !both;
      if (both) {
        const peer = peerRun(run);
        $('map-label').textContent = run.aligned.label || run.aligned.side;
        $('peer-label').textContent = (peer.aligned && peer.aligned.label) || run.aligned.peer_label || peer.id;
        $('map-label').title = `${run.id} (side ${run.aligned.side} of the aligned atlas “${run.aligned.name}”)`;
        $('peer-label').title = `${peer.id}: follows the other map; open it from the atlas picker to make it the main one`;
      }
      const toggle = $('aligned-toggle');
      toggle.hidden = !peerRun(run);
      toggle.textContent = both ? 'Single map' : 'Side by side';
      toggle.setAttribute('aria-pressed', both ? 'true' : 'false');
      toggle.title = both ? 'Show only this side' : `Show ${(run.aligned && run.aligned.peer_label) || 'the other side'} beside it`;
    }

    // ---- linked pan and zoom ----------------------------------------------------------------

    function snapped(map, z) {
      const snap = map.options.zoomSnap;
      return snap ? Math.round(z / snap) * snap : z;
    }

    // move `to`'s map to the place of `from`'s (or to where `from` is zooming: center, zoom)
    function follow(from, to, center, zoom) {
      if (me.syncing || !from.map || !to.map) return;
      const { u, v } = viewer.toLayout(center || from.map.getCenter(), from);
      const target = viewer.toLatLng(u, v, to);
      const z = snapped(to.map, viewer.relativeZoom(zoom === undefined ? from.map.getZoom() : zoom, from.m, to.m));
      if (Math.abs(to.map.getZoom() - z) < 1e-9 && to.map.project(to.map.getCenter(), z).distanceTo(to.map.project(target, z)) < 0.5) return;
      me.syncing = true;
      try { to.map.setView(target, z, { animate: false }); } finally { me.syncing = false; }
    }

    const mainMoved = () => follow(state, me.peer);
    const mainZooms = (e) => follow(state, me.peer, e.center, e.zoom);

    // ---- the crosshair: where the pointer is on the other map -------------------------------

    function dropCross() {
      if (me.cross) me.cross.remove();
      me.cross = null;
      me.crossSide = null;
      delete document.body.dataset.cross;
    }

    function pointer(side, latlng) {
      if (!me.peer || !side || !latlng) { dropCross(); return; }
      const other = side === state ? me.peer : state;
      if (!other.map) { dropCross(); return; }
      const { u, v } = viewer.toLayout(latlng, side);
      const at = viewer.toLatLng(u, v, other);
      if (me.cross && me.crossSide === other) {
        me.cross.setLatLng(at);
      } else {
        dropCross();
        me.cross = L.marker(at, {
          icon: L.divIcon({ className: 'aligned-cross', iconSize: [30, 30] }), interactive: false, keyboard: false,
        }).addTo(other.map);
        me.crossSide = other;
      }
      document.body.dataset.cross = other === state ? 'main' : 'peer';
    }

    // ---- the other side's map ---------------------------------------------------------------

    function closePeer() {
      me.opening += 1;
      if (!me.peer) return;
      viewer.hideHover();
      dropCross();
      if (state.map) state.map.off('move', mainMoved).off('zoomanim', mainZooms);
      me.peer.map.remove();
      me.peer = null;
      delete document.body.dataset.aligned;
      delete document.body.dataset.peerReady;
      delete document.body.dataset.peerLevel;
    }

    async function openPeer(run) {
      closePeer();
      const peer = peerRun(run);
      if (!peer || me.single || !state.map) return;
      const token = me.opening;
      let m;
      try {
        m = await viewer.getJSON(peer.base + 'manifest.json?v=' + encodeURIComponent(peer.build || ''));
      } catch (err) {
        $('peer-label').textContent = `${peer.id}: could not load (${err.message})`;
        return;
      }
      if (token !== me.opening || state.run !== run || !state.map) return; // another atlas opened meanwhile
      const side = { run: peer, m, map: null, regions: new Map(), tiles: null };
      const { map, tiles } = viewer.createMap('map-peer', peer, m);
      Object.assign(side, { map, tiles });
      me.peer = side;
      tiles.on('load', () => { document.body.dataset.peerReady = '1'; });
      const level = () => { document.body.dataset.peerLevel = viewer.currentLevel(side).size; };
      map.on('zoomend', level);
      map.on('mousemove', (e) => viewer.pointerMove(e, side));
      map.on('mouseout dragstart zoomstart', viewer.hideHover);
      map.on('move', () => follow(side, state));
      map.on('zoomanim', (e) => follow(side, state, e.center, e.zoom));
      const { u, v } = viewer.toLayout(state.map.getCenter());
      me.syncing = true; // the main map leads: its place is not to be moved to the snapped copy's
      try {
        map.setView(viewer.toLatLng(u, v, side), snapped(map, viewer.relativeZoom(state.map.getZoom(), state.m, m)), { animate: false });
      } finally { me.syncing = false; }
      level();
      state.map.on('move', mainMoved).on('zoomanim', mainZooms);
      document.body.dataset.aligned = peer.id;
    }

    function setSingle(single) {
      const run = state.run;
      if (!peerRun(run) || single === me.single || !state.map) return;
      me.single = single;
      closePeer();
      layout(run);
      state.map.invalidateSize(); // the map's new size, about the same centre
      if (!single) openPeer(run);
      viewer.scheduleHash();
    }

    viewer.on('layout', layout);
    viewer.on('close', closePeer);
    viewer.on('open', openPeer);
    viewer.on('pointer', pointer);
    viewer.on('hash', (p) => { if (me.single && peerRun(state.run)) p.set('single', '1'); });
    viewer.on('view', (view) => { if (view.params) setSingle(view.params.get('single') === '1'); });
    me.setSingle = setSingle;
    $('aligned-toggle').addEventListener('click', () => setSingle(!me.single));
  });
}());
