// SPDX-License-Identifier: Apache-2.0
// Written for this repository from the collector-data encodings the x402 Python SDK builds
// (x402.mechanisms.evm.batch_settlement.encoding): local stand-ins for the x402 ERC-3009 and
// Permit2 deposit collectors, NOT the audited upstream contracts. Each pulls a payer's signed
// deposit for one channel and hands the tokens to the settlement contract; only the settlement
// contract may call them. Test and demo only.
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ISignatureTransfer} from "@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";

interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}

abstract contract DepositCollector {
    /// Where the x402 SDK expects the settlement contract (a constant, so the code is the
    /// same wherever it is placed). The getter's name is the one the x402 Foundation's
    /// collectors expose, so one check reads both.
    address public constant x402BatchSettlement = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;

    error OnlySettlement();

    modifier onlySettlement() {
        if (msg.sender != x402BatchSettlement) revert OnlySettlement();
        _;
    }
}

/// collectorData = abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)
/// for the token's receiveWithAuthorization to this collector, nonce keccak256(abi.encode(channelId, salt)).
contract ERC3009DepositCollector is DepositCollector {
    using SafeERC20 for IERC20;

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data)
        external
        onlySettlement
    {
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(data, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009Receive(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        IERC20(token).safeTransfer(msg.sender, amount);
    }
}

/// collectorData = abi.encode(uint256 nonce, uint256 deadline, bytes permit2Signature, bytes eip2612Permit)
/// for a Permit2 witness transfer (witness DepositWitness{channelId}, spender this collector);
/// eip2612Permit is empty or abi.encode(uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s).
contract Permit2DepositCollector is DepositCollector {
    ISignatureTransfer public constant PERMIT2 = ISignatureTransfer(0x000000000022D473030F116dDEE9F6B43aC78BA3);
    string public constant WITNESS_TYPE_STRING =
        "DepositWitness witness)DepositWitness(bytes32 channelId)TokenPermissions(address token,uint256 amount)";
    bytes32 public constant WITNESS_TYPEHASH = keccak256("DepositWitness(bytes32 channelId)");

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data)
        external
        onlySettlement
    {
        (uint256 nonce, uint256 deadline, bytes memory signature, bytes memory eip2612Permit) =
            abi.decode(data, (uint256, uint256, bytes, bytes));
        if (eip2612Permit.length > 0) _permit(payer, token, eip2612Permit);
        PERMIT2.permitWitnessTransferFrom(
            ISignatureTransfer.PermitTransferFrom({
                permitted: ISignatureTransfer.TokenPermissions({token: token, amount: amount}),
                nonce: nonce,
                deadline: deadline
            }),
            ISignatureTransfer.SignatureTransferDetails({to: msg.sender, requestedAmount: amount}),
            payer,
            keccak256(abi.encode(WITNESS_TYPEHASH, channelId)),
            WITNESS_TYPE_STRING,
            signature
        );
    }

    function _permit(address payer, address token, bytes memory eip2612Permit) private {
        (uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) =
            abi.decode(eip2612Permit, (uint256, uint256, uint8, bytes32, bytes32));
        // A permit already used (e.g. front-run) is fine: Permit2 fails on its own without allowance.
        try IERC20Permit(token).permit(payer, address(PERMIT2), value, deadline, v, r, s) {} catch {}
    }
}
