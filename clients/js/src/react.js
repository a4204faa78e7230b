'use client';

// herald-client/react: React bindings (React >= 18, an optional peer dependency).
import React from 'react';
import { createReactBindings } from './react-bindings.js';

const bindings = createReactBindings(React);

export const RealtimeContext = bindings.RealtimeContext;
export const RealtimeProvider = bindings.RealtimeProvider;
export const useRealtimeClient = bindings.useRealtimeClient;
export const useConnectionState = bindings.useConnectionState;
export const useRealtimeChannel = bindings.useRealtimeChannel;
export const useEventStream = bindings.useEventStream;
export const usePresence = bindings.usePresence;
export { createReactBindings };
