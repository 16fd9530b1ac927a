//go:build unix && !linux

package main

import "errors"

const rawAvailable = "the bare epoll loop is Linux only"

func startRawEpoll() (string, error) { return "", errors.New(rawAvailable) }
