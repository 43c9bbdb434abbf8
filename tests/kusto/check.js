// Check KQL texts with Microsoft's Kusto language service (@kusto/language-service-next).
//
// Protocol (JSON lines): the first stdin line is {"tables": {"Name": "(Col:type, ...)", ...}};
// every following line is {"id": ..., "query": "..."}; for each, one stdout line
// {"id": ..., "diagnostics": [{severity, code, message, start, length}], "columns": [{name, type}]}.
// One process serves a whole test session: loading the library takes about a second.
"use strict";
const path = require("path");
const readline = require("readline");

const base = path.join(__dirname, "node_modules", "@kusto", "language-service-next");
require(path.join(base, "bridge.js"));
require(path.join(base, "Kusto.Language.Bridge.js"));
const K = global.Kusto;

let globals = null;
const rl = readline.createInterface({ input: process.stdin, terminal: false });

function analyze(text) {
  const code = K.Language.KustoCode.ParseAndAnalyze(text, globals);
  const diags = Bridge.toArray(code.GetDiagnostics()).map((d) => ({
    severity: String(d.Severity),
    code: String(d.Code),
    message: String(d.Message),
    start: d.Start,
    length: d.Length,
  }));
  let columns = [];
  const rt = code.ResultType;
  if (rt && rt.Columns) {
    columns = Bridge.toArray(rt.Columns).map((c) => ({ name: String(c.Name), type: String(c.Type.Name) }));
  }
  return { diagnostics: diags, columns: columns };
}

rl.on("line", (line) => {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    process.stdout.write(JSON.stringify({ fatal: "bad JSON: " + e.message }) + "\n");
    return;
  }
  if (globals === null) {
    const tables = Object.entries(msg.tables || {}).map(
      ([name, schema]) => new K.Language.Symbols.TableSymbol.$ctor7(name, schema, null)
    );
    const db = new K.Language.Symbols.DatabaseSymbol.ctor("workspace", tables);
    globals = K.Language.GlobalState.Default.WithDatabase(db);
    process.stdout.write(JSON.stringify({ ready: true, tables: tables.length }) + "\n");
    return;
  }
  let out;
  try {
    out = Object.assign({ id: msg.id }, analyze(msg.query));
  } catch (e) {
    out = { id: msg.id, fatal: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
});
