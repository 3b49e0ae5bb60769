/* Activation atlas viewer: the layer row of a multi-layer run (loaded before atlas.js, which
 * calls it with its API).
 *
 * A multi-layer run keeps one atlas per layer (RUN/layers/<layer>/tiles); the server lists each
 * with "layers": { group, names: the run's layers in the model's order, ids: { layer: the id of
 * its atlas } } (only the layers whose atlas is built). The row shows every name: the current one
 * marked, the ones without an atlas disabled. A click opens that layer's atlas where this one is
 * (the same place and on-screen size of the layout) with the same class highlight and search
 * text; the hash's run= records it, so a reload comes back to it.
 */
(function () {
  'use strict';

  (window.atlasViewerFeatures = window.atlasViewerFeatures || []).push((viewer) => {
    const { state, el } = viewer;
    const row = () => document.getElementById('layer-row');

    function render(run) {
      const box = row();
      const info = run && run.layers;
      if (!info || !Array.isArray(info.names) || !info.names.length) {
        box.hidden = true;
        box.replaceChildren();
        delete document.body.dataset.layers;
        return;
      }
      const ids = info.ids || {};
      box.replaceChildren(el('span', { cls: 'field-label', text: 'Layer' }), ...info.names.map((name) => {
        const target = typeof ids[name] === 'string' ? state.runs.find((r) => r.id === ids[name]) : null;
        const current = !!target && target.id === run.id;
        const title = !target ? `${name}: not built yet` : current ? `${name}: shown` : `Show the atlas of ${name}`;
        const button = el('button', {
          type: 'button', cls: current ? 'layer current' : 'layer', 'data-layer': name, title,
          'aria-pressed': current ? 'true' : 'false', 'aria-current': current ? 'true' : null, disabled: !target,
          text: name, onclick: target && !current ? () => open(target) : null,
        });
        // a disabled button gets no pointer events in some browsers: its wrapper carries the tooltip
        return el('span', { cls: 'layer-slot', title }, [button]);
      }));
      box.hidden = false;
      document.body.dataset.layers = info.names.join(',');
    }

    async function open(target) {
      for (const b of row().querySelectorAll('button')) b.disabled = true; // one switch at a time
      await viewer.switchRun(target);
    }

    viewer.on('layout', render);
  });
}());
