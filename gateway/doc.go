// Package gateway wires moongate's daemon together: triggers, dispatch of
// events to functions, the processing pipeline and the daemon's lifecycle.
package gateway
