// Validates prometheus-operator objects (JSON, one array on stdin) against the operator's
// CRD schemas as @kubernetes-models/prometheus-operator compiles them; prints one line per
// problem ("Kind/name: message") and exits 1 if there is any.
//   node validate_crds.mjs NODE_MODULES < objects.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const models = join(process.argv[2], "@kubernetes-models/prometheus-operator");
const v1 = await import(pathToFileURL(join(models, "monitoring.coreos.com/v1/index.js")));

const objects = JSON.parse(readFileSync(0, "utf8"));
let problems = 0;
for (const object of objects) {
  const kind = v1[object.kind];
  const where = `${object.kind}/${object.metadata?.name}`;
  if (kind === undefined || object.apiVersion !== "monitoring.coreos.com/v1") {
    console.log(`${where}: not a monitoring.coreos.com/v1 kind`);
    problems++;
    continue;
  }
  try {
    new kind(object).validate();
  } catch (error) {
    console.log(`${where}: ${error.message}`);
    problems++;
  }
}
process.exit(problems ? 1 : 0);
