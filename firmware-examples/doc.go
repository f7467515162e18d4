// Package firmwareexamples holds no code: its tests build and run the device
// examples of this directory (linux-c/ against a moongate started by the
// test and against a broker that drops it, micropython/ through py_compile
// and on the host against fakes of the board), check their paired Lua functions
// on golden events, and run the fleet simulator (devsim/) with 1,000
// devices against the embedded broker. See README.md for the device contract.
package firmwareexamples
