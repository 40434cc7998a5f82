// SPDX-License-Identifier: Apache-2.0
// What the local x402 Permit2 proxies share: Permit2 at its canonical address, the checks on
// the signed parties, and the optional EIP-2612 permit. The error names are the ones the x402
// SDK looks for in a revert message. Test and demo only.
pragma solidity 0.8.37;

import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {ISignatureTransfer} from "@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";

abstract contract Permit2Witness {
    /// Where Permit2 lives on every chain (a constant, so this code works wherever it is placed).
    ISignatureTransfer public constant PERMIT2 = ISignatureTransfer(0x000000000022D473030F116dDEE9F6B43aC78BA3);

    struct EIP2612Permit {
        uint256 value;
        uint256 deadline;
        bytes32 r;
        bytes32 s;
        uint8 v;
    }

    error InvalidOwner();
    error InvalidDestination();
    error PaymentTooEarly();
    error Permit2612AmountMismatch();

    function _checkParties(address owner, address to, uint256 validAfter) internal view {
        if (owner == address(0)) revert InvalidOwner();
        if (to == address(0)) revert InvalidDestination();
        if (block.timestamp < validAfter) revert PaymentTooEarly();
    }

    function _applyEip2612Permit(EIP2612Permit calldata p, address token, address owner, uint256 amount) internal {
        if (p.value < amount) revert Permit2612AmountMismatch();
        try IERC20Permit(token).permit(owner, address(PERMIT2), p.value, p.deadline, p.v, p.r, p.s) {} catch {}
    }
}
