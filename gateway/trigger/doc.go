// Package trigger decides which functions an event goes to and loads
// functions from a directory.
//
//   - [Pattern] is an MQTT trigger: a topic filter with "+" and "#" plus
//     named single-level segments ("devices/{device}/telemetry") whose
//     values are captured for the event.
//   - [Matcher] finds every function whose patterns match a topic, through a
//     trie of topic levels; it is safe for concurrent use and updated
//     copy-on-write.
//   - [Manifest] is a function's NAME.yaml: triggers (mqtt, timer, cron,
//     http), limits, stream, sync targets and read-only config; decoded as
//     strictly as the gateway configuration (errors name file, line, key).
//   - [LoadDir] and [Watch] load a directory of NAME.lua + NAME.yaml files
//     at start and whenever it changes.
//   - [ParseSchedule] parses timer triggers: "@every 30s", "@hourly" and
//     5-field cron expressions.
package trigger
