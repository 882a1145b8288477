package realtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Engine.IO v4 packet types, the first character of every text packet.
const (
	eioOpen    = '0'
	eioClose   = '1'
	eioPing    = '2'
	eioPong    = '3'
	eioMessage = '4'
	eioUpgrade = '5'
	eioNoop    = '6'
)

// Socket.IO v5 packet types, the first character of an Engine.IO message.
const (
	sioConnect      = '0'
	sioDisconnect   = '1'
	sioEvent        = '2'
	sioAck          = '3'
	sioConnectError = '4'
	sioBinaryEvent  = '5'
	sioBinaryAck    = '6'
)

// recordSeparator joins packets in one long-polling HTTP body.
const recordSeparator = "\x1e"

// errBinary is returned for binary packets, which this server does not take:
// the contract has no client-to-server payloads, let alone binary ones.
var errBinary = errors.New("binary packets are not supported")

// sioPacket is a decoded Socket.IO packet.
type sioPacket struct {
	typ  byte
	nsp  string
	id   int64 // ack id; -1 when absent
	data json.RawMessage
}

// parseSIO decodes the payload of an Engine.IO message packet:
// <type>[<nsp>,][<ack id>][<JSON>].
func parseSIO(s string) (sioPacket, error) {
	p := sioPacket{nsp: "/", id: -1}
	if s == "" {
		return p, errors.New("empty socket.io packet")
	}
	p.typ = s[0]
	switch p.typ {
	case sioConnect, sioDisconnect, sioEvent, sioAck, sioConnectError:
	case sioBinaryEvent, sioBinaryAck:
		return p, errBinary
	default:
		return p, fmt.Errorf("unknown socket.io packet type %q", p.typ)
	}
	s = s[1:]
	if strings.HasPrefix(s, "/") {
		nsp, rest, ok := strings.Cut(s, ",")
		if !ok {
			nsp, rest = s, ""
		}
		p.nsp, s = nsp, rest
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i > 0 {
		id, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil {
			return p, fmt.Errorf("bad ack id: %w", err)
		}
		p.id, s = id, s[i:]
	}
	if s != "" {
		if !json.Valid([]byte(s)) {
			return p, errors.New("socket.io packet data is not valid JSON")
		}
		p.data = json.RawMessage(s)
	}
	return p, nil
}

// encodeSIO encodes a Socket.IO packet for the default namespace as an
// Engine.IO message packet ("4" + Socket.IO packet).
func encodeSIO(typ byte, id int64, data []byte) string {
	var b strings.Builder
	b.Grow(2 + 20 + len(data))
	b.WriteByte(eioMessage)
	b.WriteByte(typ)
	if id >= 0 {
		b.WriteString(strconv.FormatInt(id, 10))
	}
	b.Write(data)
	return b.String()
}

// encodeEvent encodes EVENT [name, data] (or [name] when data is empty).
func encodeEvent(event string, data json.RawMessage) (string, error) {
	name, err := json.Marshal(event)
	if err != nil {
		return "", fmt.Errorf("encode event name: %w", err)
	}
	var b strings.Builder
	b.Grow(4 + len(name) + len(data))
	b.WriteString("42[")
	b.Write(name)
	if len(data) > 0 {
		b.WriteByte(',')
		b.Write(data)
	}
	b.WriteByte(']')
	return b.String(), nil
}

// connectError encodes CONNECT_ERROR for namespace nsp. The official clients
// surface message as the connect_error's Error.message and data as err.data.
func connectError(nsp, message string, data any) string {
	body := struct {
		Message string `json:"message"`
		Data    any    `json:"data,omitempty"`
	}{message, data}
	b, _ := json.Marshal(body) // plain strings and our own small structs
	prefix := "44"
	if nsp != "/" {
		prefix += nsp + ","
	}
	return prefix + string(b)
}

// handshake is the JSON of the Engine.IO open packet.
type handshake struct {
	SID          string   `json:"sid"`
	Upgrades     []string `json:"upgrades"`
	PingInterval int64    `json:"pingInterval"`
	PingTimeout  int64    `json:"pingTimeout"`
	MaxPayload   int64    `json:"maxPayload"`
}
