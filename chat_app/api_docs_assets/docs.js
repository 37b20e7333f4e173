// A small, self-contained reader for /api/openapi.json: no CDN, no framework, and only
// textContent (never innerHTML), so nothing in the schema can run as code here.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(schema, spec, depth) {
  if (!schema || depth > 6) return schema;
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return resolve((spec.components.schemas || {})[name], spec, depth + 1);
  }
  const out = Array.isArray(schema) ? [] : {};
  for (const [key, value] of Object.entries(schema)) {
    out[key] = value && typeof value === "object" ? resolve(value, spec, depth + 1) : value;
  }
  return out;
}

function example(schema, depth) {
  if (!schema || depth > 5) return null;
  if (schema.const !== undefined) return schema.const;
  if (schema.default !== undefined) return schema.default;
  const choice = schema.oneOf || schema.anyOf;
  if (choice) return example(choice.find((s) => s.type !== "null") || choice[0], depth + 1);
  if (schema.enum) return schema.enum[0];
  switch (schema.type) {
    case "object": {
      const out = {};
      for (const [key, value] of Object.entries(schema.properties || {})) {
        out[key] = example(value, depth + 1);
      }
      return out;
    }
    case "array": return [example(schema.items, depth + 1)];
    case "integer": case "number": return 0;
    case "boolean": return false;
    case "string": return "string";
    default: return null;
  }
}

function bodySection(op, spec) {
  const content = (op.requestBody || {}).content || {};
  const json = content["application/json"];
  if (!json) return null;
  const schema = resolve(json.schema, spec, 0);
  const variants = schema.oneOf || schema.anyOf || [schema];
  const parts = [el("h3", {}, "Request body (application/json)")];
  for (const variant of variants) {
    const kind = ((variant.properties || {}).kind || {}).const;
    if (kind) parts.push(el("div", {}, el("strong", {}, `kind: "${kind}"`)));
    parts.push(el("pre", {}, JSON.stringify(example(variant, 0), null, 2)));
  }
  return el("div", {}, ...parts);
}

function parametersSection(op) {
  if (!op.parameters || !op.parameters.length) return null;
  const rows = op.parameters.map((p) =>
    el("tr", {}, el("td", {}, p.name), el("td", {}, p.in), el("td", {}, p.required ? "required" : ""),
       el("td", {}, (p.schema && (p.schema.type || (p.schema.anyOf || []).map((s) => s.type).join(" | "))) || ""),
       el("td", {}, p.description || "")));
  return el("div", {}, el("h3", {}, "Parameters"), el("table", {}, ...rows));
}

function responsesSection(op) {
  const rows = Object.entries(op.responses || {}).map(([code, answer]) =>
    el("tr", {}, el("td", {}, code), el("td", {}, answer.description || "")));
  return el("div", {}, el("h3", {}, "Responses"), el("table", {}, ...rows));
}

async function main() {
  const answer = await fetch("/api/openapi.json", { credentials: "same-origin" });
  const spec = await answer.json();
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  const intro = document.getElementById("intro");
  intro.textContent = spec.info.description || "";
  intro.className = "desc";
  const toc = document.getElementById("toc");
  const main = document.getElementById("operations");
  let index = 0;
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const id = `op-${index++}`;
      toc.append(el("a", { href: `#${id}` }, `${method.toUpperCase()} ${path}`));
      main.append(el("section", { class: "op", id },
        el("div", {}, el("span", { class: `method ${method}` }, method), el("span", { class: "path" }, path)),
        el("p", {}, el("strong", {}, op.summary || "")),
        op.description ? el("p", { class: "desc" }, op.description) : null,
        parametersSection(op), bodySection(op, spec), responsesSection(op)));
    }
  }
}

main().catch((error) => {
  document.getElementById("intro").textContent = `Could not load the schema: ${error}`;
});
