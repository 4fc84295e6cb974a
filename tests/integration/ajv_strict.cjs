// Compiles a JSON Schema in ajv's strict mode (draft 2020-12, standard formats) and prints,
// as a JSON list, whether each instance is valid: `node ajv_strict.cjs SCHEMA INSTANCES`.
"use strict";
const fs = require("node:fs");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

const [schemaPath, instancesPath] = process.argv.slice(2);
const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);
const validate = ajv.compile(JSON.parse(fs.readFileSync(schemaPath, "utf8")));
const instances = JSON.parse(fs.readFileSync(instancesPath, "utf8"));
process.stdout.write(JSON.stringify(instances.map((instance) => validate(instance))));
