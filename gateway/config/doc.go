// Package config loads and validates moongate's configuration: one YAML
// file, decoded strictly. An unknown key, a value of the wrong type or a bad
// value is an error that names the file, the line and the key path, for
// example
//
//	moongate.yaml:12: mqtt.embedded.listen: invalid address "x": missing port in address
//
// Keys that are absent keep their defaults (see [Default]); an empty file is
// the default configuration. Secrets can be overridden from the environment
// with explicit variables only (see [EnvMQTTPassword], [EnvDataDir]); values
// are never expanded (`${VAR}` stays literal).
//
// The strict YAML decoder is exported ([DecodeNode], [Unmarshal]) so that
// other moongate files (function manifests) report errors the same way.
//
// A *Config is a plain value: safe for concurrent reads once loaded, not for
// concurrent modification.
package config
