// A minimal stand-in for React's hooks, enough to exercise the bindings without installing React:
// one component per root, hooks by call order, effects after each commit (layout effects first),
// state updates re-render synchronously after the commit.

function depsChanged(prev, next) {
  if (!prev || !next) return true;
  if (prev.length !== next.length) return true;
  return prev.some((v, i) => !Object.is(v, next[i]));
}

export function createFakeReact() {
  let current = null;

  function hook(init) {
    const root = current;
    if (!root) throw new Error('hook called outside a component');
    const i = root.index++;
    if (!(i in root.hooks)) root.hooks[i] = init();
    return { root, h: root.hooks[i] };
  }

  function effectHook(kind, fn, deps) {
    const { root, h } = hook(() => ({ deps: undefined, cleanup: undefined }));
    if (deps === undefined || depsChanged(h.deps, deps)) {
      root.pending.push({ kind, h, fn, deps });
    }
  }

  const React = {
    createContext(defaultValue) {
      const ctx = { defaultValue, displayName: undefined };
      ctx.Provider = { $$provider: ctx };
      return ctx;
    },
    createElement(type, props, ...children) {
      return { type, props: { ...props, children: children.length <= 1 ? children[0] : children } };
    },
    useContext(ctx) {
      const root = current;
      return root.contexts.has(ctx) ? root.contexts.get(ctx) : ctx.defaultValue;
    },
    useState(initial) {
      const { root, h } = hook(() => ({ value: typeof initial === 'function' ? initial() : initial }));
      if (!h.set) {
        h.set = (next) => {
          const value = typeof next === 'function' ? next(h.value) : next;
          if (Object.is(value, h.value)) return;
          h.value = value;
          root.schedule();
        };
      }
      return [h.value, h.set];
    },
    useRef(initial) {
      const { h } = hook(() => ({ current: initial }));
      return h;
    },
    useMemo(fn, deps) {
      const { h } = hook(() => ({ deps: undefined, value: undefined }));
      if (depsChanged(h.deps, deps)) {
        h.value = fn();
        h.deps = deps;
      }
      return h.value;
    },
    useCallback(fn, deps) {
      return React.useMemo(() => fn, deps);
    },
    useEffect(fn, deps) {
      effectHook('effect', fn, deps);
    },
    useLayoutEffect(fn, deps) {
      effectHook('layout', fn, deps);
    },
    useSyncExternalStore(subscribe, getSnapshot) {
      const value = getSnapshot();
      const { root } = { root: current };
      React.useEffect(() => {
        let last = getSnapshot();
        if (!Object.is(last, value)) root.schedule();
        return subscribe(() => {
          const next = getSnapshot();
          if (!Object.is(next, last)) {
            last = next;
            root.schedule();
          }
        });
      }, [subscribe, getSnapshot]);
      return value;
    },
  };

  /** Renders `Component(props)`; returns a handle with the latest output and controls. */
  function render(Component, props = {}, { contexts = new Map() } = {}) {
    const root = {
      hooks: [],
      index: 0,
      pending: [],
      contexts,
      props,
      output: undefined,
      renders: 0,
      rendering: false,
      dirty: false,
      unmounted: false,
      schedule() {
        if (root.unmounted) return;
        if (root.rendering) root.dirty = true;
        else run();
      },
    };

    function run() {
      let guard = 0;
      do {
        root.dirty = false;
        root.rendering = true;
        root.index = 0;
        root.pending = [];
        current = root;
        try {
          root.output = Component(root.props);
          root.renders += 1;
        } finally {
          current = null;
        }
        const pending = root.pending;
        for (const kind of ['layout', 'effect']) {
          for (const e of pending.filter((p) => p.kind === kind)) {
            if (typeof e.h.cleanup === 'function') e.h.cleanup();
            e.h.cleanup = e.fn();
            e.h.deps = e.deps;
          }
        }
        root.rendering = false;
        if (++guard > 50) throw new Error('render loop');
      } while (root.dirty && !root.unmounted);
    }

    run();
    return {
      get output() {
        return root.output;
      },
      get renders() {
        return root.renders;
      },
      rerender(nextProps = root.props) {
        root.props = nextProps;
        run();
      },
      unmount() {
        root.unmounted = true;
        for (const h of root.hooks) {
          if (h && typeof h.cleanup === 'function') h.cleanup();
        }
      },
    };
  }

  return { React, render };
}
