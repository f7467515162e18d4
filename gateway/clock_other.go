//go:build !linux

package gateway

import "errors"

// kernelClockSynced is not known outside Linux.
func kernelClockSynced() (bool, error) {
	return false, errors.New("clock synchronization status not available on this system")
}
