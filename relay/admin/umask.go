package admin

import "syscall"

// umask sets the process umask and returns the old one, so the socket is
// created without a moment of wider permissions.
func umask(m int) int { return syscall.Umask(m) }
