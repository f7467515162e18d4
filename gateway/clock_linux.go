package gateway

import "golang.org/x/sys/unix"

// kernelClockSynced reports whether the kernel considers the system clock
// synchronized: an NTP client (systemd-timesyncd, chrony, ntpd) that
// disciplines it clears STA_UNSYNC, and adjtimex then stops answering
// TIME_ERROR.
func kernelClockSynced() (bool, error) {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return false, err
	}
	return state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0, nil
}
