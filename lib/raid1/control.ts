// A RAID1 array served by one process, driven from others: a Unix socket
// per array, one JSON request per line, one JSON answer per line.
import { mkdirSync, rmSync } from 'node:fs'
import { createConnection, createServer, type Server } from 'node:net'
import { createInterface } from 'node:readline'

import { UblkError } from '../errors.js'
import type { Raid1Array } from './array.js'

const CONTROL_DIR = process.env.UBLK_TS_RUN_DIR ?? '/run/ublk-ts'

export function controlSocket(id: number): string {
  return `${CONTROL_DIR}/raid1-${id}.sock`
}

export type ControlRequest =
  | { cmd: 'status' }
  | { cmd: 'fail'; slot: number }
  | { cmd: 'add'; path: string; force?: boolean }
  | { cmd: 'stop' }

type Answer = { ok: true; result?: unknown } | { ok: false; code: string; message: string }

/** Listens for requests on the array's socket until `close()`. */
export function serveControl(md: Raid1Array, onStop: () => void): Server {
  mkdirSync(CONTROL_DIR, { recursive: true })
  const path = controlSocket(md.id)
  rmSync(path, { force: true })
  const server = createServer((conn) => {
    createInterface({ input: conn }).on('line', (line) => {
      void answer(md, line, onStop).then((a) => conn.end(JSON.stringify(a) + '\n'))
    })
    conn.on('error', () => undefined)
  })
  server.listen(path)
  server.on('close', () => rmSync(path, { force: true }))
  return server
}

async function answer(md: Raid1Array, line: string, onStop: () => void): Promise<Answer> {
  try {
    const req = JSON.parse(line) as ControlRequest
    switch (req.cmd) {
      case 'status':
        return { ok: true, result: md.status() }
      case 'fail':
        await md.failMember(req.slot)
        return { ok: true }
      case 'add':
        await md.addMember(req.path, { force: req.force === true })
        return { ok: true }
      case 'stop':
        onStop()
        return { ok: true }
      default:
        throw new UblkError('EINVAL', `unknown request ${String((req as { cmd?: unknown }).cmd)}`)
    }
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown }
    return { ok: false, code: typeof e.code === 'string' ? e.code : 'EIO', message: String(e.message ?? err) }
  }
}

/** Sends one request to the process serving array `id`. */
export function request(id: number, req: ControlRequest): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const conn = createConnection(controlSocket(id))
    conn.on('error', (err: NodeJS.ErrnoException) => {
      const code = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'ENODEV' : (err.code ?? 'EIO')
      reject(new UblkError(code, `no RAID1 array ${id} is served here (${controlSocket(id)})`))
    })
    conn.once('connect', () => {
      conn.write(JSON.stringify(req) + '\n')
      createInterface({ input: conn }).once('line', (line) => {
        conn.end()
        const a = JSON.parse(line) as Answer
        if (a.ok) resolve(a.result)
        else reject(new UblkError(a.code, a.message))
      })
    })
  })
}
