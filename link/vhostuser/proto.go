package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// Front-end requests (vhost-user specification, "Front-end message types").
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFD            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqSendRARP            = 19
	reqMax                 = 44
)

var reqNames = [...]string{
	reqGetFeatures: "GET_FEATURES", reqSetFeatures: "SET_FEATURES", reqSetOwner: "SET_OWNER",
	reqResetOwner: "RESET_OWNER", reqSetMemTable: "SET_MEM_TABLE", reqSetLogBase: "SET_LOG_BASE",
	reqSetLogFD: "SET_LOG_FD", reqSetVringNum: "SET_VRING_NUM", reqSetVringAddr: "SET_VRING_ADDR",
	reqSetVringBase: "SET_VRING_BASE", reqGetVringBase: "GET_VRING_BASE", reqSetVringKick: "SET_VRING_KICK",
	reqSetVringCall: "SET_VRING_CALL", reqSetVringErr: "SET_VRING_ERR",
	reqGetProtocolFeatures: "GET_PROTOCOL_FEATURES", reqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	reqGetQueueNum: "GET_QUEUE_NUM", reqSetVringEnable: "SET_VRING_ENABLE", reqSendRARP: "SEND_RARP",
	20: "NET_SET_MTU", 21: "SET_BACKEND_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN",
	24: "GET_CONFIG", 25: "SET_CONFIG", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD",
	36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS", 40: "GET_STATUS",
	42: "SET_DEVICE_STATE_FD", 43: "CHECK_DEVICE_STATE",
}

func reqName(r uint32) string {
	if r < uint32(len(reqNames)) && reqNames[r] != "" {
		return reqNames[r]
	}
	return fmt.Sprintf("request %d", r)
}

// Header flags.
const (
	flagVersion   = 0x1 // the only protocol version
	flagVersMask  = 0x3
	flagReply     = 0x4
	flagNeedReply = 0x8
)

// Feature bits.
const (
	fNetCsum         = 0  // VIRTIO_NET_F_CSUM
	fNetGuestCsum    = 1  // VIRTIO_NET_F_GUEST_CSUM
	fNetMrgRxbuf     = 15 // VIRTIO_NET_F_MRG_RXBUF
	fRingIndirect    = 28 // VIRTIO_RING_F_INDIRECT_DESC
	fRingEventIdx    = 29 // VIRTIO_RING_F_EVENT_IDX
	fProtocolFeats   = 30 // VHOST_USER_F_PROTOCOL_FEATURES
	fVersion1        = 32 // VIRTIO_F_VERSION_1
	pfReplyAck       = 3  // VHOST_USER_PROTOCOL_F_REPLY_ACK
	pfRARP           = 2  // VHOST_USER_PROTOCOL_F_RARP
	vringIdxMask     = 0xff
	vringNoFD        = 0x100
	hdrSize          = 12
	maxPayload       = 8 + maxRegions*32 // the memory table is the largest we accept
	numQueues        = 2                 // receive (0) and transmit (1)
	rxQ, txQ         = 0, 1
	virtioNetHdrSize = 12 // struct virtio_net_hdr_mrg_rxbuf
	hdrFDataValid    = 2  // VIRTIO_NET_HDR_F_DATA_VALID
	hdrFNeedsCsum    = 1  // VIRTIO_NET_HDR_F_NEEDS_CSUM
)

// Features are what the back end offers: virtio 1, mergeable receive
// buffers, checksums the guest need not verify, checksums the guest need
// not compute (we fill them in: a host CPU sums far faster than an
// emulated one), event indexes for interrupt and kick suppression, and the
// protocol-feature extension.
const Features uint64 = 1<<fVersion1 | 1<<fNetCsum | 1<<fNetGuestCsum | 1<<fNetMrgRxbuf |
	1<<fRingEventIdx | 1<<fProtocolFeats

// ProtocolFeatures are the protocol features offered: replies on request,
// and SEND_RARP (accepted and ignored: the guest announces itself).
const ProtocolFeatures uint64 = 1<<pfReplyAck | 1<<pfRARP

// msg is one message in either direction: header, payload, and the file
// descriptors that came with it (owned by whoever holds the msg until it
// calls closeFDs or takes them).
type msg struct {
	req, flags, size uint32
	payload          [maxPayload]byte
	fds              []int
}

func (m *msg) body() []byte { return m.payload[:m.size] }

func (m *msg) u64() (uint64, error) {
	if m.size < 8 {
		return 0, fmt.Errorf("%s: payload of %d bytes, want 8", reqName(m.req), m.size)
	}
	return binary.LittleEndian.Uint64(m.payload[:]), nil
}

// closeFDs closes descriptors nobody took.
func (m *msg) closeFDs() {
	for _, fd := range m.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	m.fds = m.fds[:0]
}

// takeFD returns the message's single descriptor and leaves it to the
// caller, or -1 if it has none.
func (m *msg) takeFD() int {
	if len(m.fds) == 0 {
		return -1
	}
	fd := m.fds[0]
	m.fds[0] = -1
	return fd
}

var errProto = errors.New("vhost-user protocol error")

// conn reads and writes messages on the front end's control socket.
type conn struct {
	c   *net.UnixConn
	oob []byte
	out [hdrSize + maxPayload]byte
}

func newConn(c *net.UnixConn) *conn {
	return &conn{c: c, oob: make([]byte, unix.CmsgSpace(maxRegions*4))}
}

// read reads the next message into m. Descriptors come with the header
// (the front end sends each message with one sendmsg); any that arrive
// later are a protocol error, and all are closed on error.
func (k *conn) read(m *msg) error {
	m.closeFDs()
	var h [hdrSize]byte
	n, oobn, flags, _, err := k.c.ReadMsgUnix(h[:], k.oob)
	if oobn > 0 {
		if e := m.parseRights(k.oob[:oobn]); e != nil && err == nil {
			err = e
		}
	}
	if err == nil && flags&unix.MSG_CTRUNC != 0 {
		err = fmt.Errorf("%w: too many descriptors", errProto)
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err == nil && n < hdrSize {
		_, err = io.ReadFull(k.c, h[n:])
	}
	if err != nil {
		m.closeFDs()
		return err
	}
	m.req = binary.LittleEndian.Uint32(h[0:])
	m.flags = binary.LittleEndian.Uint32(h[4:])
	m.size = binary.LittleEndian.Uint32(h[8:])
	if m.flags&flagVersMask != flagVersion {
		m.closeFDs()
		return fmt.Errorf("%w: %s with version %d", errProto, reqName(m.req), m.flags&flagVersMask)
	}
	if m.size > maxPayload {
		m.closeFDs()
		return fmt.Errorf("%w: %s with a payload of %d bytes", errProto, reqName(m.req), m.size)
	}
	if _, err := io.ReadFull(k.c, m.payload[:m.size]); err != nil {
		m.closeFDs()
		return err
	}
	return nil
}

func (m *msg) parseRights(oob []byte) error {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return err
	}
	for _, cm := range cms {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue
		}
		m.fds = append(m.fds, fds...)
	}
	return nil
}

// reply sends the reply to request req with payload p.
func (k *conn) reply(req uint32, p []byte) error {
	binary.LittleEndian.PutUint32(k.out[0:], req)
	binary.LittleEndian.PutUint32(k.out[4:], flagVersion|flagReply)
	binary.LittleEndian.PutUint32(k.out[8:], uint32(len(p)))
	n := copy(k.out[hdrSize:], p)
	_, err := k.c.Write(k.out[:hdrSize+n])
	return err
}

func (k *conn) replyU64(req uint32, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return k.reply(req, b[:])
}
