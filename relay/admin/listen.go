package admin

import (
	"net"
	"os"
	"syscall"
)

// listenPrivate listens on a unix socket at path created with mode 0600,
// without a moment of wider permissions. The socket's own mode is set
// before bind, which Linux gives the file it creates (less the umask); the
// process umask is left alone: it is shared by every thread, and a program
// started or a directory made by another goroutine meanwhile took it.
func listenPrivate(path string) (net.Listener, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // FileListener has its own copy
	if err := syscall.Fchmod(fd, 0o600); err != nil {
		return nil, &net.OpError{Op: "listen", Net: "unix", Err: os.NewSyscallError("fchmod", err)}
	}
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		return nil, &net.OpError{Op: "listen", Net: "unix", Addr: addr, Err: os.NewSyscallError("bind", err)}
	}
	if err := syscall.Listen(fd, syscall.SOMAXCONN); err != nil {
		os.Remove(path)
		return nil, &net.OpError{Op: "listen", Net: "unix", Addr: addr, Err: os.NewSyscallError("listen", err)}
	}
	ln, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(true) // as net.Listen's: Close removes the socket file
	return ul, nil
}
