// Runs the Argo CD health scripts (gitops/argocd/*.lua) against sample objects, the way Argo
// CD does: the object as a global table `obj`, the chunk returning {status, message}. Argo CD
// uses gopher-lua (Lua 5.1) and turns every JSON number into a float; fengari is Lua 5.3, so
// numbers are pushed as floats here too. Run by .ci/gitops-check with `node --test`.
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { test } = require("node:test");
const { lua, lauxlib, lualib, to_luastring, to_jsstring } = require("fengari");
const YAML = require("yaml");

const gitops = path.resolve(__dirname, "..");
const SCRIPTS = {
  ConnectorCredential: fs.readFileSync(path.join(gitops, "argocd/connectorcredential-health.lua"), "utf8"),
  Integration: fs.readFileSync(path.join(gitops, "argocd/integration-health.lua"), "utf8"),
};

function pushValue(L, value) {
  if (value === null || value === undefined) {
    lua.lua_pushnil(L);
  } else if (typeof value === "boolean") {
    lua.lua_pushboolean(L, value);
  } else if (typeof value === "number") {
    lua.lua_pushnumber(L, value);
  } else if (typeof value === "string") {
    lua.lua_pushstring(L, to_luastring(value));
  } else if (Array.isArray(value)) {
    lua.lua_createtable(L, value.length, 0);
    value.forEach((item, i) => {
      pushValue(L, item);
      lua.lua_rawseti(L, -2, i + 1);
    });
  } else {
    lua.lua_createtable(L, 0, Object.keys(value).length);
    for (const [key, item] of Object.entries(value)) {
      pushValue(L, item);
      lua.lua_setfield(L, -2, to_luastring(key));
    }
  }
}

function field(L, name) {
  lua.lua_getfield(L, -1, to_luastring(name));
  const value = lua.lua_isnil(L, -1) ? undefined : to_jsstring(lua.lua_tostring(L, -1));
  lua.lua_pop(L, 1);
  return value;
}

// Evaluates a health script the way Argo CD does and returns {status, message}.
function health(script, obj) {
  const L = lauxlib.luaL_newstate();
  lualib.luaL_openlibs(L);
  pushValue(L, obj);
  lua.lua_setglobal(L, to_luastring("obj"));
  if (lauxlib.luaL_loadstring(L, to_luastring(script)) !== lua.LUA_OK) {
    throw new Error("does not compile: " + to_jsstring(lua.lua_tostring(L, -1)));
  }
  if (lua.lua_pcall(L, 0, 1, 0) !== lua.LUA_OK) {
    throw new Error("fails: " + to_jsstring(lua.lua_tostring(L, -1)));
  }
  assert.ok(lua.lua_istable(L, -1), "the script must return a table");
  return { status: field(L, "status"), message: field(L, "message") };
}

function condition(type, status, reason, message, observedGeneration) {
  const c = { type, status, reason, message, lastTransitionTime: "2026-11-20T10:00:00Z" };
  if (observedGeneration !== undefined) c.observedGeneration = observedGeneration;
  return c;
}

function object(kind, generation, status) {
  const obj = {
    apiVersion: "reconnect.dev/v1alpha1",
    kind,
    metadata: { name: "procore-sync", namespace: "acme", generation },
    spec: {},
  };
  if (status !== undefined) obj.status = status;
  return obj;
}

const LOST = "connector procore: credential procore-sync lost its connection; re-authenticate account svc-sync@acme.com";
const MISMATCH = "account svc-new@acme.com lacks documents.write (held by svc-sync@acme.com)";

// [name, generation, status, expected status, expected message (string or RegExp)]
const CASES = [
  ["no status yet", 1, undefined, "Progressing", /Waiting for the operator/],
  ["status without observedGeneration", 1, { phase: "Pending" }, "Progressing", /Waiting for the operator/],
  [
    "spec changed since the last status: Ready True is stale",
    3,
    { observedGeneration: 2, phase: "Connected", conditions: [condition("Ready", "True", "Connected", "ok", 2)] },
    "Progressing",
    "Waiting for the operator to observe generation 3 (status is for 2)",
  ],
  [
    "stale Ready condition",
    3,
    { observedGeneration: 3, phase: "Connected", conditions: [condition("Ready", "True", "Connected", "ok", 2)] },
    "Progressing",
    "Waiting for the Ready condition to reflect generation 3",
  ],
  [
    "connected",
    4,
    {
      observedGeneration: 4,
      phase: "Connected",
      conditions: [
        condition("Connected", "True", "Connected", "authenticated", 4),
        condition("Ready", "True", "Connected", "Connected as svc-sync@acme.com", 4),
      ],
    },
    "Healthy",
    "Connected as svc-sync@acme.com",
  ],
  [
    "Ready True wins even with an older rejected rotation on record",
    4,
    {
      observedGeneration: 4,
      phase: "Connected",
      rejected: { revision: "sha256:ab", reason: "PermissionMismatch", message: MISMATCH, at: "2026-11-20T10:00:00Z" },
      conditions: [condition("Ready", "True", "Connected", "Connected as svc-sync@acme.com", 4)],
    },
    "Healthy",
    "Connected as svc-sync@acme.com",
  ],
  [
    "connection lost",
    2,
    {
      observedGeneration: 2,
      phase: "ConnectionLost",
      conditions: [condition("Ready", "False", "ConnectionLost", LOST, 2)],
    },
    "Degraded",
    LOST,
  ],
  [
    "permission mismatch",
    2,
    {
      observedGeneration: 2,
      phase: "PermissionMismatch",
      conditions: [condition("Ready", "False", "PermissionMismatch", MISMATCH, 2)],
    },
    "Degraded",
    MISMATCH,
  ],
  ["degraded phase without a Ready condition", 2, { observedGeneration: 2, phase: "ConnectionLost" }, "Degraded", "ConnectionLost"],
  [
    "rotation rejected: the old credential runs, but a person must fix the new one",
    2,
    {
      observedGeneration: 2,
      phase: "RotationRejected",
      conditions: [condition("Ready", "False", "RotationRejected", "revision sha256:cd rejected: invalid_client; revision sha256:ab (svc-sync@acme.com) stays active", 2)],
    },
    "Degraded",
    "revision sha256:cd rejected: invalid_client; revision sha256:ab (svc-sync@acme.com) stays active",
  ],
  [
    "misconfigured: the source Secret lacks a key",
    2,
    {
      observedGeneration: 2,
      phase: "Misconfigured",
      conditions: [condition("Ready", "False", "MissingKey", "source Secret procore-src lacks client_secret", 2)],
    },
    "Degraded",
    "source Secret procore-src lacks client_secret",
  ],
  [
    "pending: first validation",
    1,
    {
      observedGeneration: 1,
      phase: "Pending",
      conditions: [condition("Ready", "False", "Validating", "validating against procore", 1)],
    },
    "Progressing",
    "validating against procore",
  ],
  [
    "pending: source Secret missing",
    1,
    {
      observedGeneration: 1,
      phase: "Pending",
      conditions: [condition("Ready", "False", "SecretNotFound", "Secret acme/procore-sync not found", 1)],
    },
    "Progressing",
    "Secret acme/procore-sync not found",
  ],
  ["observed, no phase and no conditions", 1, { observedGeneration: 1 }, "Progressing", /./],
  [
    "Ready Unknown",
    5,
    { observedGeneration: 5, phase: "Connected", conditions: [condition("Ready", "Unknown", "Rotating", "rotating", 5)] },
    "Progressing",
    "rotating",
  ],
];

function expectHealth(script, [, generation, status, wantStatus, wantMessage], kind) {
  const got = health(script, object(kind, generation, status));
  assert.equal(got.status, wantStatus);
  if (wantMessage instanceof RegExp) {
    assert.match(got.message, wantMessage);
  } else {
    assert.equal(got.message, wantMessage);
  }
}

for (const kind of Object.keys(SCRIPTS)) {
  for (const c of CASES) {
    test(`${kind}: ${c[0]} -> ${c[3]}`, () => expectHealth(SCRIPTS[kind], c, kind));
  }
}

test("argocd-health-checks.yaml embeds the .lua files byte for byte", () => {
  const cm = YAML.parse(fs.readFileSync(path.join(gitops, "argocd-health-checks.yaml"), "utf8"));
  assert.equal(cm.kind, "ConfigMap");
  assert.equal(cm.metadata.name, "argocd-cm");
  const keys = Object.keys(cm.data).sort();
  assert.deepEqual(keys, [
    "resource.customizations.health.reconnect.dev_ConnectorCredential",
    "resource.customizations.health.reconnect.dev_Integration",
  ]);
  for (const kind of Object.keys(SCRIPTS)) {
    assert.equal(
      cm.data[`resource.customizations.health.reconnect.dev_${kind}`],
      SCRIPTS[kind],
      `the ${kind} script in argocd-health-checks.yaml differs from gitops/argocd/`,
    );
  }
});

test("the scripts stay within Lua 5.1 (what Argo CD's gopher-lua runs)", () => {
  for (const [kind, script] of Object.entries(SCRIPTS)) {
    // Lua 5.2+ syntax gopher-lua rejects: goto/labels, integer division, bitwise operators.
    assert.doesNotMatch(script, /\bgoto\b|::\w+::|\/\/|~(?!=)|&|\||<<|>>/, `${kind} uses syntax newer than Lua 5.1`);
  }
});
