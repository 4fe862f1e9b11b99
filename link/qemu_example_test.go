package link_test

import (
	"context"

	"github.com/sirupsen/logrus"

	"github.com/gopasta/gopasta/link"
)

// Example_passtMode shows how the passt-mode daemon wires the link: a
// listener on -s PATH (or the first free default path), a ReconnectingDevice
// in front of it for the dispatcher and the Writer, or a plain QemuDevice
// for -F FD. (Compiled, not run: it would wait for QEMU.)
func Example_passtMode() {
	var (
		socketPath string // -s
		fd         = -1   // -F
		oneOff     bool   // -1
		mtu        = link.QemuMTU
		peer       link.Peer
		log        = logrus.New()
	)

	var dev link.Device
	if fd >= 0 {
		// -F: QEMU (or a wrapper) handed us a connected socket. When it
		// closes, ReadBatch returns ErrClosed and the daemon exits.
		d, err := link.QemuDeviceFromFD(fd)
		if err != nil {
			log.Fatal(err)
		}
		d.SetMTU(mtu)
		peer.SetMAC(link.Broadcast)
		dev = d
	} else {
		if socketPath == "" {
			p, err := link.DefaultQemuSocketPath()
			if err != nil {
				log.Fatal(err)
			}
			socketPath = p
		}
		ln, err := link.ListenQemu(socketPath)
		if err != nil {
			log.Fatal(err)
		}
		log.Infof("UNIX domain socket bound at %s", ln.Path())
		log.Infof("You can now start qemu (>= 7.2) with: kvm ... %s", link.QemuCommandHint(ln.Path()))
		dev = link.NewReconnectingDevice(ln, link.ReconnectConfig{
			MTU:    mtu,
			OneOff: oneOff,
			OnConnect: func(c *link.QemuDevice) {
				// A new VM may have a new MAC: talk broadcast until
				// its first frame tells us.
				peer.SetMAC(link.Broadcast)
				log.Infof("accepted connection from PID %d", c.PeerPID())
			},
			OnDisconnect: func(c *link.QemuDevice) {
				log.Infof("client closed connection (%d frames in, %d out)",
					c.Stats.RxFrames.Load(), c.Stats.TxFrames.Load())
			},
			OnRefused: func(pid int) {
				log.Infof("discarding connection from PID %d", pid)
			},
		})
	}
	defer dev.Close()

	// The Writer and the dispatcher's reader then use dev as any Device:
	// with ReconnectingDevice they see ErrClosed only at shutdown (or,
	// with -1, when the VM leaves).
	w := link.NewWriter(dev, 1024)
	go w.Run(context.Background())
	frames := make([]*link.Frame, link.BatchSize)
	for i := range frames {
		frames[i] = link.GetFrame(link.MaxFrameSize)
	}
	for {
		n, err := dev.ReadBatch(frames)
		if err != nil {
			return // link.ErrClosed: shut down
		}
		_ = frames[:n] // dispatch (hand them over, take fresh frames)
	}
}
